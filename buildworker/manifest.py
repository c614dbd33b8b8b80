"""The one build-manifest parser, shared by the API, the worker and the local runner.

builds.sr.ht has three parsers that disagree (spec/buildsrht.md §1.1); this module is the
single replacement. It accepts exactly builds.sr.ht's format, ignores unknown keys (reported as
warnings) and fixes what the spec marks as bugs: task-name length, secret-name bounds,
trigger conditions, unique artifact basenames, nested environment maps, invalid variable
names. Every problem is collected as a :class:`FieldError` whose ``field`` is a path such as
``tasks[2]`` or ``environment.FOO``; nothing but :class:`ManifestError` ever escapes
:func:`parse_manifest`.

Pure: no I/O. ``yaml.safe_load`` semantics only (a SafeLoader subclass), one document,
no alias bombs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "DEFAULT_MAX_ARTIFACTS",
    "DEFAULT_MAX_SIZE",
    "RESERVED_SHELL_NAMES",
    "EnvValue",
    "FieldError",
    "Manifest",
    "ManifestError",
    "Source",
    "Task",
    "Trigger",
    "parse_manifest",
    "parse_source",
]

#: Largest manifest accepted, in bytes of UTF-8 (builds.sr.ht's `job.manifest varchar(16384)`).
DEFAULT_MAX_SIZE = 16384
#: Most artifacts one job may declare (builds.sr.ht uploads none at all past 8; we refuse).
DEFAULT_MAX_ARTIFACTS = 8
#: Longest task name (builds.sr.ht docs; its Go validator forgot the check).
MAX_TASK_NAME = 128
#: Bounds of a secret name, inclusive (the Python validator's rule; Go is off by one).
SECRET_NAME_MIN, SECRET_NAME_MAX = 3, 512
#: Longest image name (builds.sr.ht's `job.image varchar(128)`).
MAX_IMAGE_NAME = 128
#: Nodes a document may expand to once aliases are followed. A 16 KiB manifest without
#: aliases has far fewer; "billion laughs" documents have astronomically more.
MAX_EXPANDED_NODES = 100_000

KNOWN_KEYS = (
    "image",
    "arch",
    "packages",
    "repositories",
    "sources",
    "tasks",
    "triggers",
    "environment",
    "secrets",
    "shell",
    "artifacts",
    "oauth",
)
TRIGGER_ACTIONS = ("email", "webhook")
TRIGGER_CONDITIONS = ("always", "success", "failure")
#: Fields each trigger action understands besides `action` and `condition`.
TRIGGER_FIELDS = {"email": ("to", "cc", "in_reply_to"), "webhook": ("url",)}
KNOWN_SCMS = ("git", "hg")
#: Variables bash sets itself or keeps read-only: a value written to ~/.buildenv for one of
#: these would not come back (measured with bash 5.2: `export X=v; printf %s "$X"`).
RESERVED_SHELL_NAMES = frozenset(
    {
        "_",
        "BASHOPTS",
        "BASHPID",
        "BASH_ARGC",
        "BASH_ARGV",
        "BASH_COMMAND",
        "BASH_LINENO",
        "BASH_SOURCE",
        "BASH_SUBSHELL",
        "BASH_VERSINFO",
        "DIRSTACK",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "FUNCNAME",
        "GROUPS",
        "HISTCMD",
        "LINENO",
        "OPTIND",
        "PPID",
        "RANDOM",
        "SECONDS",
        "SHELLOPTS",
        "SRANDOM",
        "UID",
    }
)

#: Variables the worker writes to ~/.buildenv itself, overriding the manifest's.
WORKER_VARIABLES = ("CI_NAME", "JOB_ID", "JOB_URL", "OAUTH2_TOKEN")

_TASK_NAME = re.compile(r"[a-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Image and arch names end up in file paths and libvirt domain names: keep them boring.
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*(/[a-z0-9][a-z0-9._+-]*)*")
# Repository names become file names in the guest (`/etc/apt/sources.list.d/<name>.list`);
# '@' starts an Alpine tagged repository.
_REPO_NAME = re.compile(r"[A-Za-z0-9@._-]+")
_ARCH_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Go's url.Parse scheme rule: a letter, then letters, digits, '+', '-', '.', then ':'.
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# core-go auth.DecodeGrants: space-separated `service/SCOPE` with an optional `:RO`/`:RW`.
_OAUTH_GRANT = re.compile(r"[a-z0-9.-]+/[A-Z0-9_]+(:R[OW])?")

_MERGE_TAG = "tag:yaml.org,2002:merge"

EnvScalar = str | int | float | bool | None
EnvValue = EnvScalar | list[EnvScalar]


@dataclass(frozen=True)
class FieldError:
    """One problem with a manifest: where (a path such as ``tasks[2]``) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ManifestError(ValueError):
    """The manifest is not acceptable; ``errors`` lists every problem found.

    ``warnings`` holds what would have been reported as warnings had the manifest been valid
    (unknown keys, duplicate keys), so a linter can show everything at once.
    """

    def __init__(self, errors: list[FieldError], warnings: list[FieldError] | None = None) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("; ".join(map(str, self.errors)))


@dataclass(frozen=True)
class Task:
    name: str
    script: str


@dataclass(frozen=True)
class Source:
    """A repository to clone: ``directory`` is relative to the build user's home."""

    scm: str
    url: str
    directory: str
    ref: str | None


@dataclass(frozen=True)
class Trigger:
    """A post-build trigger; ``options`` holds the action's fields (to, cc, in_reply_to, url)."""

    action: str
    condition: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    image: str
    arch: str | None
    packages: tuple[str, ...] = ()
    repositories: dict[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    tasks: tuple[Task, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    environment: dict[str, EnvValue] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    shell: bool = False
    artifacts: tuple[str, ...] = ()
    oauth: str | None = None
    warnings: tuple[FieldError, ...] = ()

    def parsed_sources(self) -> list[Source]:
        return [parse_source(entry) for entry in self.sources]


# --------------------------------------------------------------------------- sources


def _go_path_base(path: str) -> str:
    """Go's ``path.Base``: last element after trailing slashes are removed."""
    if path == "":
        return "."
    path = path.rstrip("/")
    if path == "":
        return "/"
    return path.rsplit("/", 1)[-1]


def parse_source(entry: str) -> Source:
    """Split a ``sources`` entry into ``(scm, url, directory, ref)``.

    Follows builds.sr.ht's algorithm step by step (spec §1.5, `worker/tasks.go`), including its
    odd corners: a URL with two ``#`` keeps both and has no ref; the directory comes from the
    URL before the ``dir::`` split; ``.git`` is trimmed only when no ``dir::`` was given.
    Raises nothing; :func:`parse_manifest` validates the result.
    """
    url, ref = entry, None
    parts = entry.split("#")
    if len(parts) == 2:
        url, ref = parts[0], parts[1] or None
    directory = _go_path_base(url)
    named = False
    parts = url.split("::")
    if len(parts) == 2:
        url = parts[1]
        named = True
        if parts[0] != "":
            directory = parts[0]
    scm = "git"
    match = _URL_SCHEME.match(url)
    if match:
        scheme_parts = match.group(1).lower().split("+")
        if len(scheme_parts) == 2:
            scm = scheme_parts[0]
            url = scheme_parts[1] + url[match.end(1) :]
    if scm == "git" and not named and directory.endswith(".git"):
        directory = directory[: -len(".git")]
    return Source(scm=scm, url=url, directory=directory, ref=ref)


# --------------------------------------------------------------------------- YAML loading


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """``yaml.safe_load``'s loader, except that timestamps stay the text the user wrote.

    builds.sr.ht's Go decoder keeps them as strings too; a ``datetime`` would also be a value
    no renderer knows, and an impossible date (``2001-13-45``) a ValueError from PyYAML.
    """


_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),
)


def _yaml_error(exc: BaseException, text: str) -> FieldError:
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "invalid YAML"
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return FieldError("yaml", f"{problem}{where}")
    if isinstance(exc, yaml.reader.ReaderError):
        # libyaml reports it as a marked error; the pure-Python reader only has an offset.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return FieldError(
            "yaml",
            f"unacceptable character #x{exc.character:04x}: {exc.reason} "
            f"(line {line}, column {column})",
        )
    if isinstance(exc, RecursionError):
        return FieldError("yaml", "nested too deeply")
    lines = str(exc).strip().splitlines()
    return FieldError("yaml", lines[0] if lines else type(exc).__name__)


def _key_label(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else "<complex key>"


def _check_nodes(root: Node, warnings: list[FieldError]) -> FieldError | None:
    """Walk the composed document before anything is constructed.

    Counts how many nodes the document expands to when aliases are followed (alias bombs
    share nodes, so they are cheap to compose but explosive to walk), refuses recursive
    aliases, and records duplicate mapping keys, which PyYAML silently resolves as
    "last wins" (as builds.sr.ht does; we accept it but say so).
    """
    expanded: dict[int, int] = {}
    on_stack: set[int] = set()
    # Iterative post-order walk: (node, path, children_pushed).
    stack: list[tuple[Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, done = stack.pop()
        key = id(node)
        if done:
            on_stack.discard(key)
            total = 1 + sum(expanded[id(child)] for child, _ in _children(node, path))
            if total > MAX_EXPANDED_NODES:
                return FieldError(
                    "yaml",
                    f"aliases expand to more than {MAX_EXPANDED_NODES} nodes (alias bomb?)",
                )
            expanded[key] = total
            continue
        if key in expanded:
            continue
        if key in on_stack:
            return FieldError("yaml", "recursive alias")
        if isinstance(node, ScalarNode):
            expanded[key] = 1
            continue
        on_stack.add(key)
        stack.append((node, path, True))
        if isinstance(node, MappingNode):
            _note_duplicate_keys(node, path, warnings)
        for child, child_path in _children(node, path):
            if id(child) in on_stack:
                return FieldError("yaml", "recursive alias")
            if id(child) not in expanded:
                stack.append((child, child_path, False))
    return None


def _children(node: Node, path: str) -> Iterator[tuple[Node, str]]:
    if isinstance(node, SequenceNode):
        for index, child in enumerate(node.value):
            yield child, f"{path}[{index}]"
    elif isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            label = _key_label(key_node)
            yield key_node, path
            yield value_node, f"{path}.{label}" if path else label


def _note_duplicate_keys(node: MappingNode, path: str, warnings: list[FieldError]) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            where = f"{path}.{key_node.value}" if path else str(key_node.value)
            warnings.append(FieldError(where, "duplicate key (the last value wins)"))
        seen.add(ident)


def _load_yaml(text: str, warnings: list[FieldError]) -> Any:
    """Load exactly one YAML document with safe types, or raise ManifestError."""
    try:
        # The pure-Python reader already checks characters in its constructor.
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ManifestError([_yaml_error(exc, text)]) from None
    try:
        return _load_single(loader, warnings)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ValueError/TypeError/OverflowError: PyYAML's constructors let a few through for
        # odd scalars (huge ints, bad base64 under an explicit tag).
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError([_yaml_error(exc, text)]) from None
    finally:
        loader.dispose()


def _load_single(loader: yaml.SafeLoader, warnings: list[FieldError]) -> Any:
    if not loader.check_node():
        raise ManifestError([FieldError("yaml", "the manifest is empty")])
    root = loader.get_node()
    if loader.check_node():
        raise ManifestError(
            [FieldError("yaml", "more than one YAML document (only one manifest per file)")]
        )
    if root is None:
        raise ManifestError([FieldError("yaml", "the manifest is empty")])
    problem = _check_nodes(root, warnings)
    if problem is not None:
        raise ManifestError([problem])
    return loader.construct_document(root)


# --------------------------------------------------------------------------- validation


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


def _text_problem(value: str) -> str | None:
    """Characters no shell variable or file written over SSH can carry."""
    if "\x00" in value:
        return "contains a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "contains an unpaired surrogate (not valid Unicode)"
    return None


class _Checker:
    """Collects errors and warnings while converting the loaded YAML into a Manifest."""

    def __init__(self, data: Mapping[Any, Any], warnings: list[FieldError], max_artifacts: int):
        self.data = data
        self.errors: list[FieldError] = []
        self.warnings = warnings
        self.max_artifacts = max_artifacts

    def error(self, where: str, reason: str) -> None:
        self.errors.append(FieldError(where, reason))

    def get(self, key: str) -> Any:
        # An explicit `null` means "absent", as in builds.sr.ht's Go decoder.
        return self.data.get(key)

    def string_list(self, key: str) -> list[tuple[int, str]]:
        """The non-empty strings of a list-of-strings key, with their positions."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be a list of strings, not {_type_name(value)}")
            return []
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error(f"{key}[{index}]", f"must be a string, not {_type_name(item)}")
            elif item.strip() == "":
                self.error(f"{key}[{index}]", "must not be empty")
            else:
                items.append((index, item))
        return items

    def packages(self) -> tuple[str, ...]:
        return tuple(item for _, item in self.string_list("packages"))

    def optional_string(self, key: str) -> str | None:
        value = self.get(key)
        if value is None or isinstance(value, str):
            return value
        self.error(key, f"must be a string, not {_type_name(value)}")
        return None

    # -- one method per top-level key, in builds.sr.ht's table order

    def image(self) -> str:
        value = self.get("image")
        if value is None or value == "":
            self.error("image", "required (e.g. image: debian/bookworm)")
            return ""
        if not isinstance(value, str):
            self.error("image", f"must be a string, not {_type_name(value)}")
            return ""
        if len(value) > MAX_IMAGE_NAME:
            self.error("image", f"must be at most {MAX_IMAGE_NAME} characters")
        elif not _IMAGE_NAME.fullmatch(value):
            self.error(
                "image",
                f"invalid image name {value!r} (use lowercase letters, digits, '.', '_', "
                "'+', '-' and '/', e.g. debian/bookworm)",
            )
        return value

    def arch(self) -> str | None:
        value = self.optional_string("arch")
        if value is not None and not _ARCH_NAME.fullmatch(value):
            self.error("arch", f"invalid architecture {value!r} (e.g. amd64, x86_64, arm64)")
        return value

    def repositories(self) -> dict[str, str]:
        value = self.get("repositories")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("repositories", f"must be a map of name: source, not {_type_name(value)}")
            return {}
        result = {}
        for name, source in value.items():
            if not isinstance(name, str) or not _REPO_NAME.fullmatch(name):
                self.error(
                    f"repositories.{name}",
                    "invalid repository name (use letters, digits, '@', '.', '_' and '-')",
                )
            elif not isinstance(source, str):
                self.error(f"repositories.{name}", f"must be a string, not {_type_name(source)}")
            elif not source.strip():
                self.error(f"repositories.{name}", "must not be empty")
            else:
                result[name] = source
        return result

    def sources(self) -> tuple[str, ...]:
        entries = self.string_list("sources")
        directories: dict[str, int] = {}
        for index, entry in entries:
            problems = _source_problems(entry)
            for reason in problems:
                self.error(f"sources[{index}]", reason)
            if problems:
                continue
            # A second clone into the same directory fails in the guest; say so at submit.
            directory = parse_source(entry).directory
            if directory in directories:
                self.error(
                    f"sources[{index}]",
                    f"directory {directory!r} is already used by sources[{directories[directory]}]"
                    "; use 'name::url'",
                )
            directories.setdefault(directory, index)
        return tuple(entry for _, entry in entries)

    def tasks(self, shell: bool) -> tuple[Task, ...]:
        value = self.get("tasks")
        if value is None or value == []:
            if not shell:
                self.error("tasks", "at least one task is required (unless shell: true)")
            return ()
        if not isinstance(value, list):
            self.error("tasks", f"must be a list of 'name: script' maps, not {_type_name(value)}")
            return ()
        tasks: list[Task] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            where = f"tasks[{index}]"
            if not isinstance(item, dict) or len(item) != 1:
                self.error(where, "a task is a map with exactly one key: 'name: script'")
                continue
            ((name, script),) = item.items()
            if isinstance(name, int) and not isinstance(name, bool):
                name = str(name)  # `- 1: make` — Go decodes the key as the string "1"
            if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
                self.error(where, f"invalid task name {name!r} (use a-z, 0-9, _ and -)")
                continue
            if len(name) > MAX_TASK_NAME:
                self.error(where, f"task name is longer than {MAX_TASK_NAME} characters")
                continue
            if name in seen:
                self.error(where, f"duplicate task name {name!r} (first in tasks[{seen[name]}])")
                continue
            seen[name] = index
            if script is None:
                self.warnings.append(FieldError(where, f"task {name!r} has an empty script"))
                script = ""
            elif isinstance(script, bool):
                script = "true" if script else "false"
            elif isinstance(script, int | float):
                script = str(script)
            if not isinstance(script, str):
                self.error(
                    where, f"the script of {name!r} must be a string, not {_type_name(script)}"
                )
                continue
            problem = _text_problem(script)
            if problem:
                self.error(where, f"the script of {name!r} {problem}")
                continue
            tasks.append(Task(name=name, script=script))
        return tuple(tasks)

    def triggers(self) -> tuple[Trigger, ...]:
        value = self.get("triggers")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error("triggers", f"must be a list of maps, not {_type_name(value)}")
            return ()
        triggers = []
        for index, item in enumerate(value):
            trigger = self._trigger(f"triggers[{index}]", item)
            if trigger is not None:
                triggers.append(trigger)
        return tuple(triggers)

    def _trigger(self, where: str, item: Any) -> Trigger | None:
        if not isinstance(item, dict):
            self.error(
                where, f"a trigger is a map with action and condition, not {_type_name(item)}"
            )
            return None
        ok = True
        action = item.get("action")
        condition = item.get("condition")
        if action is None:
            self.error(f"{where}.action", "required (email or webhook)")
            ok = False
        elif action not in TRIGGER_ACTIONS:
            self.error(
                f"{where}.action", f"unknown trigger action {action!r} (use email or webhook)"
            )
            ok = False
        if condition is None:
            self.error(f"{where}.condition", "required (always, success or failure)")
            ok = False
        elif condition not in TRIGGER_CONDITIONS:
            self.error(
                f"{where}.condition",
                f"unknown condition {condition!r} (use always, success or failure)",
            )
            ok = False
        options: dict[str, Any] = {}
        allowed = TRIGGER_FIELDS.get(action, ()) if isinstance(action, str) else ()
        for key, option in item.items():
            if key in ("action", "condition"):
                continue
            if key not in allowed:
                if ok:
                    self.warnings.append(FieldError(f"{where}.{key}", "unknown key, ignored"))
                continue
            if option is None:
                continue
            if not isinstance(option, str):
                self.error(f"{where}.{key}", f"must be a string, not {_type_name(option)}")
                ok = False
                continue
            if not option.strip():
                self.error(f"{where}.{key}", "must not be empty")
                ok = False
                continue
            options[key] = option
        if action == "email" and "to" not in options and "cc" not in options:
            self.error(f"{where}.to", "an email trigger needs 'to' (or 'cc')")
            ok = False
        if action == "webhook":
            url = options.get("url")
            if url is None:
                self.error(f"{where}.url", "required for a webhook trigger")
                ok = False
            elif not re.match(r"https?://[^\s]+\Z", url):
                self.error(f"{where}.url", f"must be an http:// or https:// URL, not {url!r}")
                ok = False
        if not ok:
            return None
        return Trigger(action=str(action), condition=str(condition), options=options)

    def environment(self) -> dict[str, EnvValue]:
        value = self.get("environment")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("environment", f"must be a map of NAME: value, not {_type_name(value)}")
            return {}
        result: dict[str, EnvValue] = {}
        for name, item in value.items():
            where = f"environment.{name}"
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                self.error(
                    where,
                    "invalid variable name (use A-Z, a-z, 0-9 and _, not starting with a digit)",
                )
                continue
            if name in RESERVED_SHELL_NAMES:
                self.error(where, "reserved: the shell sets this variable itself")
                continue
            if name in WORKER_VARIABLES:
                self.warnings.append(FieldError(where, "set by the worker; this value is ignored"))
            ok, checked = self._env_value(where, item)
            if ok:
                result[name] = checked
        return result

    def _env_value(self, where: str, item: Any) -> tuple[bool, EnvValue]:
        if isinstance(item, dict):
            self.error(where, "nested maps are not supported (use a string, a number or a list)")
            return False, None
        if not isinstance(item, list):
            return self._env_scalar(where, item)
        items: list[EnvScalar] = []
        for index, element in enumerate(item):
            if isinstance(element, list | dict):
                self.error(f"{where}[{index}]", "list items must be strings, numbers or booleans")
                return False, None
            ok, scalar = self._env_scalar(f"{where}[{index}]", element)
            if not ok:
                return False, None
            items.append(scalar)
        return True, items

    def _env_scalar(self, where: str, item: Any) -> tuple[bool, EnvScalar]:
        if item is None or isinstance(item, bool | int | float):
            return True, item
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                self.error(where, problem)
                return False, None
            return True, item
        self.error(where, f"unsupported value of type {_type_name(item)}")
        return False, None

    def secrets(self) -> tuple[str, ...]:
        value = self.get("secrets")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(
                "secrets", f"must be a list of secret UUIDs or names, not {_type_name(value)}"
            )
            return ()
        result = []
        for index, item in enumerate(value):
            where = f"secrets[{index}]"
            if not isinstance(item, str):
                self.error(where, f"must be a string, not {_type_name(item)}")
            elif not SECRET_NAME_MIN <= len(item) <= SECRET_NAME_MAX:
                # A UUID is 32+ characters, so this one rule covers both forms.
                self.error(
                    where,
                    f"must be a secret UUID or a name of {SECRET_NAME_MIN} to "
                    f"{SECRET_NAME_MAX} characters",
                )
            else:
                result.append(item)
        return tuple(result)

    def shell(self) -> bool:
        value = self.get("shell")
        if value is None:
            return False
        if not isinstance(value, bool):
            self.error("shell", f"must be true or false, not {_type_name(value)}")
            return False
        return value

    def artifacts(self) -> tuple[str, ...]:
        value = self.get("artifacts")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error("artifacts", f"must be a list of file paths, not {_type_name(value)}")
            return ()
        if len(value) > self.max_artifacts:
            self.error(
                "artifacts", f"at most {self.max_artifacts} artifacts are allowed, got {len(value)}"
            )
        result = []
        basenames: dict[str, int] = {}
        for index, item in enumerate(value):
            where = f"artifacts[{index}]"
            if not isinstance(item, str):
                self.error(where, f"must be a file path, not {_type_name(item)}")
                continue
            if not item.strip():
                self.error(where, "must not be empty")
                continue
            problem = _text_problem(item)
            if problem:
                self.error(where, problem)
                continue
            basename = posixpath.basename(item)
            if basename in ("", ".", ".."):
                self.error(where, f"{item!r} does not name a file")
                continue
            if basename in basenames:
                self.error(
                    where,
                    f"basename {basename!r} is already used by artifacts[{basenames[basename]}] "
                    "(artifact basenames must be unique)",
                )
                continue
            basenames[basename] = index
            if item.startswith("~"):
                self.warnings.append(
                    FieldError(
                        where, "'~' is not expanded: paths are relative to the home directory"
                    )
                )
            result.append(item)
        return tuple(result)

    def oauth(self) -> str | None:
        value = self.optional_string("oauth")
        if value is None:
            return None
        grants = value.split()
        if not grants:
            self.error("oauth", "must list at least one grant, e.g. 'builds.sr.ht/JOBS:RO'")
        for grant in grants:
            if not _OAUTH_GRANT.fullmatch(grant):
                self.error(
                    "oauth",
                    f"invalid grant {grant!r} (expected service/SCOPE, service/SCOPE:RO or "
                    "service/SCOPE:RW)",
                )
        return value


def _source_problems(entry: str) -> list[str]:
    """Why a ``sources`` entry cannot be cloned safely; empty when it is fine."""
    problems = []
    problem = _text_problem(entry)
    if problem:
        return [problem]
    if any(ch.isspace() or ord(ch) < 0x20 for ch in entry):
        return ["must not contain whitespace or control characters"]
    source = parse_source(entry)
    if source.scm not in KNOWN_SCMS:
        problems.append(f"unknown scm {source.scm!r} (use git or hg)")
    if source.url == "":
        problems.append("missing URL")
    elif source.url.startswith("-"):
        problems.append("URL must not start with '-'")
    if source.ref is not None and source.ref.startswith("-"):
        problems.append("ref must not start with '-'")
    directory = source.directory
    if (
        directory in ("", ".", "..", "/")
        or directory.startswith("/")
        or ".." in directory.split("/")
    ):
        problems.append(f"cannot clone into directory {directory!r}; use 'name::url'")
    return problems


def parse_manifest(
    text: str | bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_artifacts: int = DEFAULT_MAX_ARTIFACTS,
) -> Manifest:
    """Parse and validate a build manifest; raise :class:`ManifestError` listing every problem.

    Unknown keys, duplicate keys and other harmless oddities end up in ``Manifest.warnings``.
    """
    if isinstance(text, bytes | bytearray):  # tolerated: callers holding a request body
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                [FieldError("manifest", f"not UTF-8 text (byte {exc.start})")]
            ) from None
    if not isinstance(text, str):
        raise ManifestError([FieldError("manifest", f"must be text, not {_type_name(text)}")])
    if len(text.encode("utf-8", "surrogatepass")) > max_size:
        raise ManifestError([FieldError("manifest", f"must be at most {max_size} bytes")])
    warnings: list[FieldError] = []
    data = _load_yaml(text, warnings)
    if not isinstance(data, dict):
        raise ManifestError(
            [FieldError("yaml", f"the manifest must be a map of keys, not {_type_name(data)}")],
            warnings,
        )
    for key in data:
        if key not in KNOWN_KEYS:
            warnings.append(FieldError(str(key), "unknown key, ignored"))
    check = _Checker(data, warnings, max_artifacts)
    shell = check.shell()
    manifest = Manifest(
        image=check.image(),
        arch=check.arch(),
        packages=check.packages(),
        repositories=check.repositories(),
        sources=check.sources(),
        tasks=check.tasks(shell),
        triggers=check.triggers(),
        environment=check.environment(),
        secrets=check.secrets(),
        shell=shell,
        artifacts=check.artifacts(),
        oauth=check.oauth(),
        warnings=tuple(warnings),
    )
    if check.errors:
        raise ManifestError(sorted(check.errors, key=_key_order), warnings)
    return manifest


def _key_order(error: FieldError) -> int:
    """Sort errors by top-level key in builds.sr.ht's table order (stable within a key)."""
    top = re.split(r"[.\[]", error.field, maxsplit=1)[0]
    return KNOWN_KEYS.index(top) if top in KNOWN_KEYS else -1
