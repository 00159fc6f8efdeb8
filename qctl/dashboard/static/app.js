// queuectl dashboard: polls the JSON API every 2 s and renders it.
// Every piece of job data goes into the page through textContent, never as HTML.
"use strict";

(function () {
  var REFRESH_MS = 2000;
  var STATES = ["pending", "processing", "completed", "failed", "dead"];
  var token = metaContent("queuectl-token");
  var readOnly = metaContent("queuectl-read-only") === "1";
  var filter = "";
  var selected = null;
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

  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell) { tr.appendChild(cell); });
    return tr;
  }

  function td(text, className) { return el("td", text, className); }

  function badge(state) { return el("span", state, "badge " + state); }

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

  // Ids go in the query, percent-encoded: in a path, the browser would resolve an id "." or ".."
  // (even sent as %2E%2E) as a dot segment and ask for another address.
  function jobPath(id, action) {
    return "/api/job" + (action ? "/" + action : "") + "?id=" + encodeURIComponent(id);
  }

  function percent(rate) {
    return rate === null || rate === undefined ? "-" : (rate * 100).toFixed(1) + "%";
  }

  function api(path, options) {
    return fetch(path, Object.assign({cache: "no-store", headers: {"Accept": "application/json"}}, options || {}))
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
          return body;
        });
      });
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

  function jobIdCell(job) {
    var cell = td(null, "id");
    var link = el("button", job.id, "link");
    link.title = job.id;
    link.addEventListener("click", function () { select(job.id); });
    cell.appendChild(link);
    return cell;
  }

  function renderJobs(list) {
    fill($("jobs"), list.map(function (job) {
      var state = td(null);
      state.appendChild(badge(job.state));
      var command = td(job.command, "command");
      command.title = job.command;
      var tr = row([jobIdCell(job), state, td(job.attempts + "/" + (job.max_retries + 1), "num"),
                    td(job.priority, "num"), td(ago(job.updated_at), "muted"), command]);
      if (job.id === selected) tr.className = "selected";
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
      var action = td(null, "action");
      if (!readOnly) {
        var button = el("button", "Retry", "retry");
        button.addEventListener("click", function () { retry(job.id, button); });
        action.appendChild(button);
      }
      var error = td(job.last_error || "-", "error");
      error.title = job.command;
      return row([jobIdCell(job), error, td(ago(job.updated_at), "muted"), action]);
    }), "dlq-empty");
  }

  function renderDetail(job) {
    var panel = $("detail");
    if (!job) { panel.hidden = true; return; }
    panel.hidden = false;
    $("detail-id").textContent = job.id;
    var actions = $("detail-actions");
    actions.replaceChildren();
    if (job.state === "dead" && !readOnly) {
      var button = el("button", "Retry", "retry");
      button.addEventListener("click", function () { retry(job.id, button); });
      actions.appendChild(button);
    }
    var fields = [["command", job.command], ["state", job.state],
                  ["attempts", job.attempts + " of " + (job.max_retries + 1)], ["priority", job.priority],
                  ["run at", job.run_at], ["next run", job.next_run_at],
                  ["timeout", job.timeout === null ? null : job.timeout + " s"], ["cwd", job.cwd],
                  ["env", job.env ? Object.keys(job.env).map(function (k) { return k + "=" + job.env[k]; }).join(" ") : null],
                  ["created", job.created_at], ["updated", job.updated_at],
                  ["exit code", job.exit_code], ["last error", job.last_error]];
    var dl = $("detail-fields");
    dl.replaceChildren();
    fields.forEach(function (pair) {
      if (pair[1] === null || pair[1] === undefined) return;
      dl.appendChild(el("dt", pair[0]));
      var dd = el("dd", null, pair[0] === "command" ? "mono" : "");
      if (pair[0] === "state") dd.appendChild(badge(pair[1])); else dd.textContent = String(pair[1]);
      dl.appendChild(dd);
    });
    var runs = job.runs.slice().reverse();
    $("detail-runs").replaceChildren.apply($("detail-runs"), runs.map(function (run) {
      var exit = td(run.exit_code === null ? "-" : run.exit_code, "num");
      if (run.exit_code !== null && run.exit_code !== 0) exit.className += " bad";
      var started = td(run.started_at ? new Date(run.started_at).toLocaleTimeString() : "-", "muted");
      started.title = (run.started_at || "") + (run.worker ? " on " + run.worker : "");
      return row([td(run.run, "num"), td(run.attempt, "num"), started, td(seconds(run.duration), "num"), exit,
                  td(run.error || (run.finished_at ? "ok" : "running"), run.error ? "error" : "muted")]);
    }));
    var output = $("detail-output");
    output.replaceChildren();
    runs.forEach(function (run) {
      ["stdout", "stderr"].forEach(function (name) {
        if (!run[name]) return;
        output.appendChild(el("h3", "run " + run.run + " " + name + " (tail)"));
        output.appendChild(el("pre", run[name], name));
      });
    });
  }

  // ------------------------------------------------------------ actions

  function select(id) {
    selected = id;
    history.replaceState(null, "", id ? "#job=" + encodeURIComponent(id) : location.pathname);
    refresh();
  }

  function retry(id, button) {
    button.disabled = true;
    api(jobPath(id, "retry"), {method: "POST",
        headers: {"Accept": "application/json", "X-Queuectl-Token": token}})
      .then(function () { showProblem(null); }, function (err) { showProblem("retry " + id + ": " + err.message); })
      .then(refresh);
  }

  function showProblem(text) {
    $("problem").hidden = !text;
    $("problem").textContent = text || "";
  }

  function refresh() {
    clearTimeout(timer);
    var jobsPath = "/api/jobs?newest=1&limit=100" + (filter ? "&state=" + encodeURIComponent(filter) : "");
    var detail = selected ? api(jobPath(selected)).catch(function () { return null; })
                          : Promise.resolve(null);
    Promise.all([api("/api/status"), api("/api/stats"), api(jobsPath), api("/api/jobs?state=dead&limit=100"),
                 api("/api/workers"), detail])
      .then(function (r) {
        renderCounts(r[0]);
        renderStats(r[1]);
        renderJobs(r[2]);
        renderDlq(r[3]);
        renderWorkers(r[4]);
        if (selected && !r[5]) selected = null;
        renderDetail(r[5]);
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
        document.body.classList.remove("stale");
        if ($("problem").dataset.kind === "connection") { showProblem(null); $("problem").dataset.kind = ""; }
      }, function (err) {
        document.body.classList.add("stale");
        showProblem("cannot reach the queue: " + err.message);
        $("problem").dataset.kind = "connection";
      })
      .then(function () { timer = setTimeout(refresh, REFRESH_MS); });
  }

  function setFilter(state) {
    filter = state;
    document.querySelectorAll("#filters button").forEach(function (b) {
      b.classList.toggle("active", b.getAttribute("data-filter") === state);
    });
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("mode").hidden = !readOnly;
    document.querySelectorAll("#filters button").forEach(function (b) {
      b.addEventListener("click", function () { setFilter(b.getAttribute("data-filter")); });
    });
    document.querySelectorAll("#counts button.card").forEach(function (b) {
      b.addEventListener("click", function () { setFilter(b.getAttribute("data-state")); });
    });
    $("detail-close").addEventListener("click", function () { renderDetail(null); select(null); });
    if (location.hash.indexOf("#job=") === 0) {
      try { selected = decodeURIComponent(location.hash.slice(5)); } catch (e) { selected = null; }  // a mangled link
    }
    refresh();
  });
})();
