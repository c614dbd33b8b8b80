"""Status badges (``/~USER/TAG.svg``): success, failure or unknown, from the newest
finished job, as builds.sr.ht draws them (without its cache that ignored the tag path)."""

from __future__ import annotations

from html import escape

__all__ = ["BADGE_STATUSES", "badge_status", "badge_svg"]

#: Job statuses that decide a badge; a running or queued job leaves it as it was.
BADGE_STATUSES = ("success", "failed", "timeout")
_COLOURS = {"success": "#2e7d32", "failure": "#c62828", "unknown": "#6b6b6b"}
#: Approximate width of one character of 11px Verdana, in pixels.
_CHAR_WIDTH = 7


def badge_status(newest_finished: str | None) -> str:
    """success / failure / unknown for the newest job's status (None: no such job)."""
    if newest_finished == "success":
        return "success"
    if newest_finished in ("failed", "timeout"):
        return "failure"
    return "unknown"


def badge_svg(label: str, status: str) -> str:
    """A flat two-part badge: ``label | status``; all text escaped."""
    left = len(label) * _CHAR_WIDTH + 12
    right = len(status) * _CHAR_WIDTH + 12
    width = left + right
    colour = _COLOURS.get(status, _COLOURS["unknown"])
    label_x, status_x = left / 2, left + right / 2
    text_label, text_status = escape(label), escape(status)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{text_label}: {text_status}">'
        f"<title>{text_label}: {text_status}</title>"
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" '
        'font-size="11">'
        f'<text x="{label_x}" y="14">{text_label}</text>'
        f'<text x="{status_x}" y="14">{text_status}</text>'
        "</g></svg>"
    )
