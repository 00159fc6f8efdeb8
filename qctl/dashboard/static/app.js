// queuectl dashboard: polls the JSON API every 2 s and renders it.
// Every piece of job data goes into the page through textContent, never as HTML.
"use strict";

(function () {
  var REFRESH_MS = 2000;
  var STATES = ["pending", "processing", "completed", "failed", "dead", "cancelled"];
  var CANCELLABLE = ["pending", "processing", "failed"];
  var RETRYABLE = ["completed", "dead", "cancelled"];
  var SVG = "http://www.w3.org/2000/svg";
  var token = metaContent("queuectl-token");
  var readOnly = metaContent("queuectl-read-only") === "1";
  // What the page shows, and its address: #state=S&queue=Q&tag=T&job=ID (each part optional).
  var view = {state: "", queue: "", tag: "", job: null};
  var cancelling = {};  // ids whose running command we asked to kill, until the job is no longer processing
  var held = null;      // the jobs list that arrived while the pointer was over it (see renderJobs)
  var queueOptions = null;  // the queue names the filter offers, as last drawn
  var timer = null;

  function metaContent(name) {
    var node = document.querySelector('meta[name="' + name + '"]');
    return node ? node.getAttribute("content") : "";
  }

  function $(id) { return document.getElementById(id); }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, String(attrs[name])); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell) { tr.appendChild(cell); });
    return tr;
  }

  function td(text, className) { return el("td", text, className); }

  function badge(state) { return el("span", state, "badge " + state); }

  // A pending job that still waits for some of its dependencies: never claimed until they are done.
  function isWaiting(job) { return job.state === "pending" && job.waiting_for && job.waiting_for.length > 0; }

  // The state's badge, and for a waiting job a "waiting" flag naming what it waits for.
  function stateBadges(job) {
    var span = el("span", null, "state");
    span.appendChild(badge(job.state));
    if (isWaiting(job)) {
      var flag = el("span", "waiting", "flag waiting");
      flag.title = "waiting for: " + job.waiting_for.join(", ");
      span.appendChild(flag);
    }
    return span;
  }

  // A button that opens job `id`'s page.
  function jobLink(id) {
    var link = el("button", id, "link");
    link.title = id;
    link.addEventListener("click", function () { setView({job: id}); });
    return link;
  }

  // Links to the jobs `ids`, separated by commas, in `parent`.
  function jobLinks(parent, ids) {
    ids.forEach(function (id, i) {
      if (i) parent.appendChild(document.createTextNode(", "));
      parent.appendChild(jobLink(id));
    });
    return parent;
  }

  function fill(tbody, rows, emptyId) {
    tbody.replaceChildren.apply(tbody, rows);
    $(emptyId).hidden = rows.length > 0;
  }

  function ago(iso) {
    if (!iso) return "-";
    var delta = (Date.now() - Date.parse(iso)) / 1000;
    var span = Math.abs(delta), text;
    if (span >= 86400) text = Math.floor(span / 86400) + "d";
    else if (span >= 3600) text = Math.floor(span / 3600) + "h";
    else if (span >= 60) text = Math.floor(span / 60) + "m";
    else text = Math.floor(span) + "s";
    return delta >= 0 ? text + " ago" : "in " + text;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "-";
    if (value < 1) return Math.round(value * 1000) + " ms";
    if (value < 120) return value.toFixed(2) + " s";
    return ago(new Date(Date.now() - value * 1000).toISOString()).replace(" ago", "");
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "-";
  }

  function hhmm(iso) {
    var d = new Date(iso);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  // Ids go in the query, percent-encoded: in a path, the browser would resolve an id "." or ".."
  // (even sent as %2E%2E) as a dot segment and ask for another address.
  function jobPath(id, action) {
    return "/api/job" + (action ? "/" + action : "") + "?id=" + encodeURIComponent(id);
  }

  function percent(rate) {
    return rate === null || rate === undefined ? "-" : (rate * 100).toFixed(1) + "%";
  }

  // The JSON answer of `path`; with `paged`, {body, more}: `more` when the answer names a next page.
  function api(path, options, paged) {
    return fetch(path, Object.assign({cache: "no-store", headers: {"Accept": "application/json"}}, options || {}))
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            var err = new Error(body.error || ("HTTP " + response.status));
            err.status = response.status;
            throw err;
          }
          return paged ? {body: body, more: response.headers.has("X-Next-Cursor")} : body;
        });
      });
  }

  // ------------------------------------------------------------ the address

  function readHash() {
    var next = {state: "", queue: "", tag: "", job: null};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var eq = part.indexOf("=");
      if (eq < 0) return;
      var value;
      try { value = decodeURIComponent(part.slice(eq + 1)); } catch (e) { return; }  // a mangled link
      var key = part.slice(0, eq);
      if (key === "job") next.job = value || null;
      else if (key === "state" && STATES.indexOf(value) >= 0) next.state = value;
      else if (key === "queue" || key === "tag") next[key] = value;
    });
    return next;
  }

  function writeHash() {
    var parts = [];
    ["state", "queue", "tag", "job"].forEach(function (key) {
      if (view[key]) parts.push(key + "=" + encodeURIComponent(view[key]));
    });
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  }

  // ------------------------------------------------------------ rendering

  function renderCounts(status) {
    STATES.forEach(function (state) { $("count-" + state).textContent = status.jobs[state]; });
    $("count-workers").textContent = status.workers.processes;
    $("count-threads").textContent = status.workers.threads + (status.workers.threads === 1 ? " thread" : " threads");
  }

  function renderStats(stats) {
    $("stat-minute").textContent = stats.last_minute.runs + " (" + stats.last_minute.failures + " failed)";
    $("stat-hour").textContent = stats.last_hour.runs + " (" + stats.last_hour.failures + " failed)";
    $("stat-success").textContent = percent(stats.last_hour.success_rate);
    $("stat-throughput").textContent = stats.throughput_per_minute + " / min";
    $("stat-runtime").textContent = seconds(stats.run_time.p50) + " / " + seconds(stats.run_time.p95);
    $("stat-oldest").textContent = stats.oldest_pending_age === null ? "-" : seconds(stats.oldest_pending_age);
  }

  // 1, 2, 5, 10, 20, 50 ...: the smallest at least `value`, for the chart's top line.
  function niceCeiling(value) {
    var step = 1;
    while (true) {
      for (var i = 0; i < 3; i++) {
        var nice = [1, 2, 5][i] * step;
        if (nice >= value) return nice;
      }
      step *= 10;
    }
  }

  function renderChart(buckets) {
    var W = 720, H = 190, left = 36, right = 8, top = 10, bottom = 24;
    var plotW = W - left - right, plotH = H - top - bottom;
    var most = buckets.reduce(function (m, b) { return Math.max(m, b.runs); }, 0);
    var ceiling = niceCeiling(Math.max(most, 1));
    var slot = plotW / buckets.length, bar = Math.max(1, slot - 2);
    var chart = svg("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "class": "chart-svg"});
    chart.appendChild(svg("title", {}, "runs and failures per minute over the last hour"));
    [0, 0.5, 1].forEach(function (fraction) {
      var y = top + plotH * (1 - fraction);
      chart.appendChild(svg("line", {x1: left, x2: W - right, y1: y, y2: y, "class": "grid"}));
      if (fraction === 0 || ceiling * fraction === Math.round(ceiling * fraction)) {
        chart.appendChild(svg("text", {x: left - 6, y: y + 4, "class": "axis", "text-anchor": "end"}, ceiling * fraction));
      }
    });
    buckets.forEach(function (b, i) {
      var x = left + i * slot + (slot - bar) / 2;
      var group = svg("g", {"class": "bucket"});
      group.appendChild(svg("title", {}, hhmm(b.minute) + ": " + b.runs + (b.runs === 1 ? " run" : " runs") +
                                         ", " + b.failures + " failed"));
      var ok = b.runs - b.failures;
      var okH = plotH * ok / ceiling, failH = plotH * b.failures / ceiling;
      // A hit area the whole height, so that every minute has a tooltip, even an empty one.
      group.appendChild(svg("rect", {x: left + i * slot, y: top, width: slot, height: plotH, "class": "hit"}));
      if (b.failures) group.appendChild(svg("rect", {x: x, y: top + plotH - failH, width: bar, height: failH,
                                                     "class": "failures"}));
      if (ok) group.appendChild(svg("rect", {x: x, y: top + plotH - failH - okH, width: bar, height: okH,
                                             "class": "runs"}));
      chart.appendChild(group);
      if (i % 10 === 0 || i === buckets.length - 1) {
        chart.appendChild(svg("text", {x: left + (i + 0.5) * slot, y: H - 6, "class": "axis", "text-anchor": "middle"},
                              i === buckets.length - 1 ? "now" : hhmm(b.minute)));
      }
    });
    if (!most) {
      chart.appendChild(svg("text", {x: left + plotW / 2, y: top + plotH / 2, "class": "axis quiet",
                                     "text-anchor": "middle"}, "no runs in the last hour"));
    }
    $("chart").replaceChildren(chart);
  }

  function renderQueues(queues) {
    var select = $("filter-queue");
    var names = queues.map(function (q) { return q.name; });
    if (view.queue && names.indexOf(view.queue) < 0) names.push(view.queue);  // a filter from the address
    if (JSON.stringify(names) !== queueOptions) {  // redrawn only when they change: an open list would close
      queueOptions = JSON.stringify(names);
      var options = [el("option", "all queues")];
      options[0].value = "";
      names.forEach(function (name) {
        var option = el("option", name);
        option.value = name;
        options.push(option);
      });
      select.replaceChildren.apply(select, options);
    }
    select.value = view.queue;
    fill($("queues"), queues.map(function (q) {
      var name = td(null, "id");
      var link = el("button", q.name, "link");
      link.title = "show the jobs of queue " + q.name;
      link.addEventListener("click", function () { setView({queue: q.name}); });
      name.appendChild(link);
      var state = td(null);
      state.appendChild(el("span", q.paused ? "paused" : "active", "pill " + (q.paused ? "paused" : "active")));
      var tr = row([name, state, td(q.concurrency ? q.concurrency : "-", "num")].concat(STATES.map(function (s) {
        return td(q.jobs[s], "num" + (q.jobs[s] ? " " + s : " muted"));
      })));
      if (q.name === view.queue) tr.className = "selected";
      return tr;
    }), "queues-empty");
  }

  function jobIdCell(job) {
    var cell = td(null, "id");
    cell.appendChild(jobLink(job.id));
    return cell;
  }

  function tagList(tags) {
    var span = el("span", null, "tags");
    tags.forEach(function (tag) {
      var button = el("button", tag, "tag");
      button.title = "show the jobs tagged " + tag;
      button.addEventListener("click", function () { setView({tag: tag}); });
      span.appendChild(button);
    });
    return span;
  }

  // The job's Cancel or Retry button (none in read-only mode, or when neither applies).
  function actionButton(job) {
    if (readOnly) return null;
    if (CANCELLABLE.indexOf(job.state) >= 0) {
      var asked = job.state === "processing" && cancelling[job.id];
      var cancel = el("button", asked ? "Cancelling" : "Cancel", "action cancel");
      cancel.disabled = Boolean(asked);
      cancel.title = job.state === "processing" ? "kill its running command; it ends cancelled"
                                                 : "it ends cancelled and never runs";
      cancel.addEventListener("click", function () { act("cancel", job, cancel); });
      return cancel;
    }
    if (RETRYABLE.indexOf(job.state) >= 0) {
      var retry = el("button", "Retry", "action retry");
      retry.title = "back to pending, attempts reset";
      retry.addEventListener("click", function () { act("retry", job, retry); });
      return retry;
    }
    return null;
  }

  function actionCell(job) {
    var cell = td(null, "action");
    var button = actionButton(job);
    if (button) cell.appendChild(button);
    return cell;
  }

  // While the pointer is over the list, a timed refresh does not redraw it: rows that move under
  // the pointer would turn a click on one job's button into a click on another's. What the user
  // just did (`now`) is drawn at once.
  function renderJobs(list, now) {
    if (!now && $("jobs").matches(":hover")) { held = list; return; }
    held = null;
    fill($("jobs"), list.map(function (job) {
      var state = td(null);
      state.appendChild(stateBadges(job));
      var tags = td(null, "tags-cell");
      tags.appendChild(tagList(job.tags));
      var command = td(job.command, "command");
      command.title = job.command;
      var tr = row([jobIdCell(job), state, td(job.queue, "queue"), tags,
                    td(job.attempts + "/" + (job.max_retries + 1), "num"), td(ago(job.updated_at), "muted"),
                    command, actionCell(job)]);
      if (job.id === view.job) tr.className = "selected";
      return tr;
    }), "jobs-empty");
  }

  function renderWorkers(workers) {
    fill($("workers"), workers.map(function (w) {
      return row([td(w.pid), td(w.host), td(w.threads, "num"), td(ago(w.heartbeat_at), "muted"),
                  td(w.running.length ? w.running.join(", ") : "idle", w.running.length ? "running" : "running muted")]);
    }), "workers-empty");
  }

  function renderDlq(dead) {
    $("dlq-count").textContent = dead.length;
    fill($("dlq"), dead.map(function (job) {
      var error = td(job.last_error || "-", "error");
      error.title = job.command;
      return row([jobIdCell(job), error, td(ago(job.updated_at), "muted"), actionCell(job)]);
    }), "dlq-empty");
  }

  var AFTER_POLICY_TITLES = {
    completed: "runs once all of them have completed; dead if one of them ends dead or cancelled",
    finished: "runs once all of them have finished, whatever their outcome"
  };

  function renderSchedules(page) {
    var schedules = page.body;
    $("schedules-count").textContent = schedules.length + (page.more ? "+" : "");
    $("schedules-more").hidden = !page.more;
    fill($("schedules"), schedules.map(function (s) {
      var spec = td(s.spec, "spec");
      if (s.overlap) {
        var overlap = el("span", "overlap", "flag");
        overlap.title = "fires even while its last job is unfinished";
        spec.appendChild(document.createTextNode(" "));
        spec.appendChild(overlap);
      }
      var next = td(ago(s.next_run_at), "muted");
      next.title = when(s.next_run_at);
      var last = td(null, "last-job");
      if (s.last_job) {
        last.appendChild(jobLink(s.last_job));
        last.appendChild(document.createTextNode(" "));
        last.appendChild(s.last_state ? badge(s.last_state) : el("span", "gone", "muted"));
        if (s.last_fired_at) last.title = "fired " + when(s.last_fired_at);
      } else {
        last.textContent = "-";
        last.className += " muted";
      }
      var command = td(s.job.command, "command");
      command.title = s.job.command;
      return row([td(s.name, "name"), spec, next, last, command]);
    }), "schedules-empty");
  }

  function renderFilters() {
    document.querySelectorAll("#filters button").forEach(function (b) {
      b.classList.toggle("active", b.getAttribute("data-filter") === view.state);
    });
    if (document.activeElement !== $("filter-tag")) $("filter-tag").value = view.tag;
    $("filter-queue").value = view.queue;
    $("filter-clear").hidden = !(view.state || view.queue || view.tag);
  }

  function renderRun(run) {
    var section = el("section", null, "run");
    var head = el("div", null, "run-head");
    head.appendChild(el("span", "run " + run.run, "run-no"));
    head.appendChild(el("span", "attempt " + run.attempt, "muted"));
    var outcome = run.error || (run.finished_at ? "ok" : "running");
    head.appendChild(el("span", outcome, "outcome " + (run.error ? "bad" : run.finished_at ? "good" : "live")));
    section.appendChild(head);
    var facts = el("dl", null, "run-facts");
    [["started", when(run.started_at)], ["finished", run.finished_at ? when(run.finished_at) : "-"],
     ["duration", seconds(run.duration)], ["exit code", run.exit_code === null ? "-" : run.exit_code],
     ["worker", run.worker || "-"]].forEach(function (pair) {
      facts.appendChild(el("dt", pair[0]));
      facts.appendChild(el("dd", pair[1]));
    });
    section.appendChild(facts);
    var printed = false;
    ["stdout", "stderr"].forEach(function (name) {
      if (!run[name]) return;
      printed = true;
      section.appendChild(el("h3", name + " (tail)"));
      section.appendChild(el("pre", run[name], name));
    });
    if (!printed) section.appendChild(el("p", run.finished_at ? "no output kept" : "output comes when it ends",
                                          "muted no-output"));
    return section;
  }

  function renderDetail(job) {
    var panel = $("detail");
    if (!job) { panel.hidden = true; return; }
    panel.hidden = false;
    $("detail-id").textContent = job.id;
    var actions = $("detail-actions");
    actions.replaceChildren();
    var button = actionButton(job);
    if (button) actions.appendChild(button);
    var env = job.env ? Object.keys(job.env).sort().map(function (k) { return k + "=" + job.env[k]; }).join(" ") : null;
    var fields = [["command", job.command], ["state", job], ["queue", job.queue],
                  ["tags", job.tags.length ? job.tags : null],
                  ["waiting for", isWaiting(job) ? job.waiting_for : null],
                  ["after", job.after && job.after.length ? job : null],
                  ["unique key", job.unique_key],
                  ["attempts", job.attempts + " of " + (job.max_retries + 1)], ["priority", job.priority],
                  ["run at", when(job.run_at)], ["next run", job.next_run_at ? when(job.next_run_at) : null],
                  ["timeout", job.timeout === null ? "none" : job.timeout + " s"], ["cwd", job.cwd], ["env", env],
                  ["created", when(job.created_at)], ["updated", when(job.updated_at)],
                  ["started", job.started_at ? when(job.started_at) : null],
                  ["finished", job.finished_at ? when(job.finished_at) : null], ["worker", job.worker],
                  ["exit code", job.exit_code], ["last error", job.last_error]];
    var dl = $("detail-fields");
    dl.replaceChildren();
    fields.forEach(function (pair) {
      if (pair[1] === null || pair[1] === undefined) return;
      dl.appendChild(el("dt", pair[0]));
      var mono = ["command", "env", "cwd", "unique key"].indexOf(pair[0]) >= 0;
      var dd = el("dd", null, mono ? "mono" : "");
      if (pair[0] === "state") dd.appendChild(stateBadges(pair[1]));
      else if (pair[0] === "tags") dd.appendChild(tagList(pair[1]));
      else if (pair[0] === "waiting for") { dd.className = "job-links waiting-for"; jobLinks(dd, pair[1]); }
      else if (pair[0] === "after") {
        dd.className = "job-links after";
        jobLinks(dd, job.after);
        var policy = el("span", " (" + job.after_policy + ")", "muted policy");
        policy.title = AFTER_POLICY_TITLES[job.after_policy] || "";
        dd.appendChild(policy);
      }
      else dd.textContent = String(pair[1]);
      dl.appendChild(dd);
    });
    var runs = job.runs.slice().reverse();  // the latest first
    $("detail-runs-count").textContent = runs.length ? "(" + runs.length + ")" : "";
    $("detail-runs").replaceChildren.apply($("detail-runs"), runs.map(renderRun));
    $("detail-runs-empty").hidden = runs.length > 0;
  }

  // ------------------------------------------------------------ actions

  function setView(changes) {
    Object.keys(changes).forEach(function (key) { view[key] = changes[key]; });
    writeHash();
    renderFilters();
    refresh(true);
  }

  function act(action, job, button) {
    if (action === "cancel" && job.state === "processing" &&
        !window.confirm("Cancel job " + job.id + "? Its running command is killed.")) return;
    button.disabled = true;
    api(jobPath(job.id, action), {method: "POST", headers: {"Accept": "application/json", "X-Queuectl-Token": token}})
      .then(function (after) {
        if (action === "cancel" && after.state === "processing") cancelling[job.id] = true;
        showProblem(null);
      }, function (err) { showProblem(action + " " + job.id + ": " + err.message); })
      .then(function () { refresh(true); });
  }

  // One line at the top: what went wrong last. `kind` (connection, filter) lets the refresh that
  // finds it mended take it away; an action's error stays until the next action.
  function showProblem(text, kind) {
    $("problem").hidden = !text;
    $("problem").textContent = text || "";
    $("problem").dataset.kind = kind || "";
  }

  function mended(kind) {
    if ($("problem").dataset.kind === kind) showProblem(null);
  }

  function jobsQuery() {
    var query = "/api/jobs?newest=1&limit=100";
    ["state", "queue", "tag"].forEach(function (key) {
      if (view[key]) query += "&" + key + "=" + encodeURIComponent(view[key]);
    });
    return query;
  }

  // `byUser`: after a click, not a timed refresh (see renderJobs).
  function refresh(byUser) {
    clearTimeout(timer);
    var detail = view.job ? api(jobPath(view.job)).catch(function () { return null; }) : Promise.resolve(null);
    // A filter the server refuses (a queue name from a mangled address) empties the list, and says why.
    var filtered = api(jobsQuery()).then(function (list) {
      mended("filter");
      return list;
    }, function (err) {
      if (err.status !== 400) throw err;
      showProblem("filter: " + err.message, "filter");
      return [];
    });
    Promise.all([api("/api/status"), api("/api/stats"), filtered, api("/api/jobs?state=dead&limit=100"),
                 api("/api/workers"), api("/api/queues"), api("/api/chart"), detail,
                 api("/api/schedules", null, true)])
      .then(function (r) {
        renderCounts(r[0]);
        renderStats(r[1]);
        renderQueues(r[5]);
        renderChart(r[6]);
        renderJobs(r[2], byUser);
        renderDlq(r[3]);
        renderWorkers(r[4]);
        renderSchedules(r[8]);
        if (view.job && !r[7]) { view.job = null; writeHash(); }
        var job = r[7];
        if (job && job.state !== "processing") delete cancelling[job.id];
        r[2].forEach(function (j) { if (j.state !== "processing") delete cancelling[j.id]; });
        renderDetail(job);
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
        document.body.classList.remove("stale");
        mended("connection");
      }, function (err) {
        document.body.classList.add("stale");
        showProblem("cannot reach the queue: " + err.message, "connection");
      })
      .then(function () { timer = setTimeout(function () { refresh(false); }, REFRESH_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("mode").hidden = !readOnly;
    document.querySelectorAll("#filters button").forEach(function (b) {
      b.addEventListener("click", function () { setView({state: b.getAttribute("data-filter")}); });
    });
    document.querySelectorAll("#counts button.card").forEach(function (b) {
      b.addEventListener("click", function () { setView({state: b.getAttribute("data-state")}); });
    });
    $("filter-queue").addEventListener("change", function () { setView({queue: $("filter-queue").value}); });
    $("filter-tag").addEventListener("change", function () { setView({tag: $("filter-tag").value.trim()}); });
    $("filter-clear").addEventListener("click", function () { setView({state: "", queue: "", tag: ""}); });
    $("jobs").addEventListener("mouseleave", function () { if (held) renderJobs(held, true); });
    $("detail-close").addEventListener("click", function () { renderDetail(null); setView({job: null}); });
    window.addEventListener("hashchange", function () { view = readHash(); renderFilters(); refresh(); });
    view = readHash();
    renderFilters();
    refresh();
  });
})();
