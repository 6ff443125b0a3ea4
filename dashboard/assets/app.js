// aibox dashboard: progressive enhancement only. Every page works without this file.
(function () {
  "use strict";

  // Refresh [data-refresh] regions in place from a fresh copy of the page, every N seconds,
  // while the tab is visible and the user is not in the middle of editing inside the region.
  function busy(el) {
    var a = document.activeElement;
    if (a && a !== document.body && el.contains(a) && /INPUT|SELECT|TEXTAREA/.test(a.tagName)) return true;
    return el.querySelector("details[open]") !== null;
  }

  function keepRefreshing(id, secs) {
    setTimeout(function tick() {
      var el = document.getElementById(id);
      if (!el) return;
      if (document.hidden || busy(el)) { setTimeout(tick, secs * 1000); return; }
      fetch(location.href, { credentials: "same-origin", headers: { "X-Dashboard-Refresh": "1" } })
        .then(function (r) {
          if (r.redirected && r.url.indexOf("/login") !== -1) { location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
          if (!fresh) return;
          el.innerHTML = fresh.innerHTML;
          var next = parseInt(fresh.getAttribute("data-refresh"), 10);
          if (next > 0) secs = next;
        })
        .catch(function () { /* keep the last view; try again later */ })
        .then(function () { setTimeout(tick, secs * 1000); });
    }, secs * 1000);
  }

  document.querySelectorAll("[data-refresh][id]").forEach(function (el) {
    var secs = parseInt(el.getAttribute("data-refresh"), 10);
    if (secs > 0) keepRefreshing(el.id, secs);
  });

  // Log follow: stream the controller's NDJSON through the dashboard and append lines.
  var log = document.getElementById("log");
  if (log && log.getAttribute("data-follow-url")) follow(log, log.getAttribute("data-follow-url"));

  function setState(text) {
    var s = document.getElementById("follow-state");
    if (s) s.textContent = text;
  }

  function shortTs(ts) {
    var t = ts.split("T")[1] || ts;
    return t.slice(0, 8);
  }

  function follow(list, url) {
    var wrap = list.parentElement;
    fetch(url, { credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
        list.innerHTML = "";
        setState("following live");
        var reader = resp.body.getReader();
        var decoder = new TextDecoder();
        var buf = "";
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) { setState("stream ended"); return; }
            buf += decoder.decode(r.value, { stream: true });
            var lines = buf.split("\n");
            buf = lines.pop();
            lines.forEach(function (l) { addLine(list, wrap, l); });
            return pump();
          });
        }
        return pump();
      })
      .catch(function (e) { setState("not following (" + e.message + ")"); });
  }

  function addLine(list, wrap, text) {
    if (!text) return;
    var o;
    try { o = JSON.parse(text); } catch (e) { return; }
    var atBottom = wrap.scrollTop + wrap.clientHeight >= wrap.scrollHeight - 8;
    var li = document.createElement("li");
    li.className = "s-" + (o.stream || "stdout");
    if (o.html) {
      // Rendered by the dashboard (maud, escaped), as on the page itself.
      li.innerHTML = o.html;
    } else {
      if (o.ts) {
        var t = document.createElement("time");
        t.dateTime = o.ts;
        t.textContent = shortTs(o.ts);
        li.appendChild(t);
        li.appendChild(document.createTextNode(" "));
      }
      var s = document.createElement("span");
      s.className = "line";
      s.textContent = o.line || "";
      li.appendChild(s);
    }
    list.appendChild(li);
    while (list.children.length > 5000) list.removeChild(list.firstChild);
    if (atBottom) wrap.scrollTop = wrap.scrollHeight;
  }
})();
