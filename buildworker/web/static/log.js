// The job page's live log: polls the job's status and tails each log with Range requests
// on the log URLs, appending new lines as they come; stops when the job has ended.
// No HTML is built from log text: lines are DOM nodes with textContent, so nothing in a
// log can become markup or script. The ANSI rules are buildworker/web/ansi.py's.
"use strict";
(function () {
  var POLL_MS = 500;          // while the job runs: new output shows within a second
  var IDLE_MS = 1500;         // while it waits for a worker
  var RETRY_MAX_MS = 5000;    // longest wait between retries while the API is away
  var MAX_LINES = 20000;      // older lines are dropped past this many (the full log stays a link)

  // --- ANSI SGR to classes (same rules as buildworker/web/ansi.py) -------------------------
  var PALETTE = [[0, 0, 0], [205, 0, 0], [0, 205, 0], [205, 205, 0], [0, 0, 238], [205, 0, 205],
    [0, 205, 205], [229, 229, 229], [127, 127, 127], [255, 0, 0], [0, 255, 0], [255, 255, 0],
    [92, 92, 255], [255, 0, 255], [0, 255, 255], [255, 255, 255]];
  var CUBE = [0, 95, 135, 175, 215, 255];
  var TOKEN = /\x1b\[([0-?]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)|\x1b[PX^_][^\x1b]*(?:\x1b\\|$)|\x1b[ -\/]*[0-~]|\x1b|\r|[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

  function nearest(r, g, b) {
    var best = 0, bestDistance = -1;
    for (var i = 0; i < PALETTE.length; i++) {
      var p = PALETTE[i];
      var d = (p[0] - r) * (p[0] - r) + (p[1] - g) * (p[1] - g) + (p[2] - b) * (p[2] - b);
      if (bestDistance < 0 || d < bestDistance) { best = i; bestDistance = d; }
    }
    return best;
  }
  function xterm256(n) {
    if (n < 16) return n;
    if (n < 232) { n -= 16; return nearest(CUBE[Math.floor(n / 36)], CUBE[Math.floor(n / 6) % 6], CUBE[n % 6]); }
    var level = 8 + 10 * (n - 232);
    return nearest(level, level, level);
  }
  function params(text) {
    if (text === "") return [null];
    var out = [];
    text.split(";").forEach(function (part) {
      var subs = part.split(":");
      if (subs.length === 6 && subs[1] === "2" && subs[2] === "") subs.splice(2, 1);
      subs.forEach(function (sub) { out.push(/^[0-9]+$/.test(sub) ? parseInt(sub, 10) : null); });
    });
    return out;
  }
  function fresh() {
    return {fg: null, bg: null, bold: false, dim: false, italic: false, underline: false,
      strike: false, inverse: false};
  }
  function copy(s) { var c = {}; for (var k in s) c[k] = s[k]; return c; }
  function extended(p, i) {
    if (i >= p.length) return [null, i];
    if (p[i] === 5 && i + 1 < p.length) {
      var n = p[i + 1];
      return [n !== null && n < 256 ? xterm256(n) : null, i + 2];
    }
    if (p[i] === 2 && i + 3 < p.length) {
      var rgb = p.slice(i + 1, i + 4);
      var ok = rgb.every(function (v) { return v !== null && v < 256; });
      return [ok ? nearest(rgb[0], rgb[1], rgb[2]) : null, i + 4];
    }
    return [null, i + 1];
  }
  function apply(state, text) {
    var p = params(text), s = copy(state), i = 0;
    while (i < p.length) {
      var c = p[i++];
      if (c === null || c === 0) s = fresh();
      else if (c === 1) s.bold = true;
      else if (c === 2) s.dim = true;
      else if (c === 3) s.italic = true;
      else if (c === 4 || c === 21) s.underline = true;
      else if (c === 7) s.inverse = true;
      else if (c === 9) s.strike = true;
      else if (c === 22) { s.bold = false; s.dim = false; }
      else if (c === 23) s.italic = false;
      else if (c === 24) s.underline = false;
      else if (c === 27) s.inverse = false;
      else if (c === 29) s.strike = false;
      else if (c >= 30 && c <= 37) s.fg = c - 30;
      else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
      else if (c === 39) s.fg = null;
      else if (c >= 40 && c <= 47) s.bg = c - 40;
      else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
      else if (c === 49) s.bg = null;
      else if (c === 38 || c === 48) {
        var r = extended(p, i);
        i = r[1];
        if (r[0] !== null) { if (c === 38) s.fg = r[0]; else s.bg = r[0]; }
      }
    }
    return s;
  }
  function classes(s) {
    var names = [];
    if (s.inverse) {
      names.push(s.bg !== null ? "a-f" + s.bg : "a-fi");
      names.push(s.fg !== null ? "a-b" + s.fg : "a-bi");
    } else {
      if (s.fg !== null) names.push("a-f" + s.fg);
      if (s.bg !== null) names.push("a-b" + s.bg);
    }
    if (s.bold) names.push("a-bold");
    if (s.dim) names.push("a-dim");
    if (s.italic) names.push("a-it");
    if (s.underline) names.push("a-ul");
    if (s.strike) names.push("a-st");
    return names.join(" ");
  }
  // One line (no "\n"): [runs of [classes, text]], and the state after it.
  function renderLine(text, state) {
    var runs = [], pos = 0, m;
    TOKEN.lastIndex = 0;
    function run(t) { if (t) runs.push([classes(state), t]); }
    while ((m = TOKEN.exec(text)) !== null) {
      run(text.slice(pos, m.index));
      pos = TOKEN.lastIndex;
      if (m[0] === "") { TOKEN.lastIndex++; continue; }
      if (m[2] === "m") state = apply(state, m[1]);
      else if (m[0] === "\r" && pos < text.length) runs = [];
    }
    run(text.slice(pos));
    return {runs: runs, state: state};
  }

  // --- one followed log ----------------------------------------------------------------------
  function Follower(pre) {
    this.pre = pre;
    this.url = pre.getAttribute("data-url");
    this.prefix = pre.getAttribute("data-prefix");
    this.reset(parseInt(pre.getAttribute("data-offset"), 10) || 0,
      parseInt(pre.getAttribute("data-line"), 10) || 1,
      apply(fresh(), pre.getAttribute("data-sgr") || "0"));
  }
  Follower.prototype.reset = function (offset, line, state) {
    this.offset = offset;
    this.line = line;
    this.state = state;
    this.pending = "";
    this.decoder = new TextDecoder("utf-8");
    if (this.pendingEl) { this.pendingEl.remove(); this.pendingEl = null; }
  };
  Follower.prototype.element = function (runs, number) {
    var span = document.createElement("span");
    span.id = this.prefix + "-" + number;
    var a = document.createElement("a");
    a.href = "#" + span.id;
    a.textContent = String(number);
    span.appendChild(a);
    runs.forEach(function (r) {
      if (!r[0]) { span.appendChild(document.createTextNode(r[1])); return; }
      var s = document.createElement("span");
      s.className = r[0];
      s.textContent = r[1];
      span.appendChild(s);
    });
    return span;
  };
  Follower.prototype.add = function (text, final) {
    var pre = this.pre;
    var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    var lines = (this.pending + text).split("\n");
    this.pending = final ? "" : lines.pop();
    if (final && lines.length && lines[lines.length - 1] === "") lines.pop();
    if (this.pendingEl) { this.pendingEl.remove(); this.pendingEl = null; }
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i].replace(/\r$/, "");
      var r = renderLine(line, this.state);
      this.state = r.state;
      fragment.appendChild(this.element(r.runs, this.line++));
    }
    if (this.pending) {
      // A line still being written: shown now, redrawn when the rest of it arrives.
      this.pendingEl = this.element(renderLine(this.pending, this.state).runs, this.line);
      this.pendingEl.className = "pending";
      fragment.appendChild(this.pendingEl);
    }
    pre.appendChild(fragment);
    while (pre.childElementCount > MAX_LINES && pre.firstChild) pre.removeChild(pre.firstChild);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  Follower.prototype.fetch = function (size) {
    var self = this;
    if (size < this.offset) {
      // The log started over (the job's next attempt): so does the view.
      while (this.pre.firstChild) this.pre.removeChild(this.pre.firstChild);
      this.reset(0, 1, fresh());
    }
    if (size <= this.offset) return Promise.resolve();
    return fetch(this.url, {headers: {Range: "bytes=" + this.offset + "-"},
      credentials: "same-origin", cache: "no-store"}).then(function (response) {
      if (response.status === 416 || response.status === 404) return null;
      if (response.status !== 200 && response.status !== 206) throw new Error("log " + response.status);
      var skip = 0;
      if (response.status === 206) {
        var range = /bytes (\d+)-/.exec(response.headers.get("Content-Range") || "");
        if (!range || parseInt(range[1], 10) !== self.offset) throw new Error("unexpected range");
      } else {
        skip = self.offset;  // the whole log came: keep only what is new
      }
      return response.arrayBuffer().then(function (buffer) {
        var bytes = new Uint8Array(buffer).subarray(skip);
        self.offset += bytes.length;
        self.add(self.decoder.decode(bytes, {stream: true}), false);
      });
    });
  };
  Follower.prototype.finish = function () {
    this.add(this.decoder.decode(), true);
  };

  // --- the page --------------------------------------------------------------------------------
  function setStatus(el, status) {
    el.textContent = status;
    el.className = el.className.replace(/\bs-[a-z]+\b/, "s-" + status);
  }
  function showArtifacts(list) {
    var section = document.getElementById("artifacts");
    var ul = document.getElementById("artifact-list");
    if (!section || !ul || !list.length) return;
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    list.forEach(function (artifact) {
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = artifact.url;
      a.setAttribute("download", "");
      a.textContent = artifact.name;
      var size = document.createElement("span");
      size.className = "size";
      size.textContent = artifact.size_text;
      li.appendChild(a);
      li.appendChild(document.createTextNode(" "));
      li.appendChild(size);
      ul.appendChild(li);
    });
    section.hidden = false;
  }

  function start() {
    var job = document.getElementById("job");
    if (!job || job.getAttribute("data-final") === "yes") return;
    var statusUrl = job.getAttribute("data-status-url");
    var live = document.getElementById("live");
    var followers = {};
    Array.prototype.forEach.call(document.querySelectorAll("pre.log[data-log]"), function (pre) {
      followers[pre.getAttribute("data-log")] = new Follower(pre);
    });
    var failures = 0;
    live.hidden = false;
    live.textContent = "Following the log as it is written.";

    function update(data) {
      setStatus(document.getElementById("job-status"), data.status);
      document.title = document.title.replace(/\([a-z]+\)/, "(" + data.status + ")");
      data.tasks.forEach(function (task) {
        Array.prototype.forEach.call(document.querySelectorAll("[data-task-status]"), function (el) {
          if (el.getAttribute("data-task-status") === task.name) setStatus(el, task.status);
        });
      });
      var runner = document.getElementById("job-runner");
      if (runner && data.runner) runner.textContent = data.runner;
      if (!data.can_cancel) {
        var cancel = document.getElementById("cancel-form");
        if (cancel) cancel.remove();
      }
    }

    function tick() {
      fetch(statusUrl, {credentials: "same-origin", cache: "no-store"}).then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      }).then(function (data) {
        update(data);
        var chain = Promise.resolve();
        data.logs.forEach(function (log) {
          var follower = followers[log.key];
          if (follower) chain = chain.then(function () { return follower.fetch(log.size); });
        });
        return chain.then(function () { return data; });
      }).then(function (data) {
        if (failures) { live.textContent = "Following the log as it is written."; }
        failures = 0;
        var caughtUp = data.logs.every(function (log) {
          var f = followers[log.key];
          return !f || f.offset >= log.size;
        });
        if (data.final && caughtUp) {
          Object.keys(followers).forEach(function (key) { followers[key].finish(); });
          showArtifacts(data.artifacts);
          job.setAttribute("data-final", "yes");
          live.textContent = "The job has ended (" + data.status + ").";
          return;
        }
        setTimeout(tick, data.status === "running" ? POLL_MS : IDLE_MS);
      }).catch(function () {
        failures += 1;
        live.textContent = "Lost contact with the server; retrying…";
        setTimeout(tick, Math.min(RETRY_MAX_MS, 500 * failures));
      });
    }
    tick();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
