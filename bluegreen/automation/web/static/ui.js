// Live updates for the bluegreen status page. The page is complete without this file (the
// server renders everything); this only polls /ui/api/state and swaps in the regions the
// server rendered again, so there is one template and no client-side rendering to drift.
(function () {
  "use strict";

  // Times arrive in UTC (readable with JavaScript off); show them in the reader's zone.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d.getTime())) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString();
      }
    });
  }

  localTimes(document);
  var main = document.querySelector("main[data-live]");
  if (!main) return;
  var url = main.getAttribute("data-live");
  var every = parseInt(main.getAttribute("data-every"), 10) || 2000;
  var status = document.getElementById("live-status");
  var last = {};
  var failures = 0;

  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.className = "live-status" + (bad ? " bad" : "");
  }

  function swap(id, html) {
    var old = document.getElementById(id);
    if (!old || last[id] === html) return;
    last[id] = html;
    var open = {};  // keep the log tails a reader opened open
    old.querySelectorAll("details[open][data-key]").forEach(function (d) {
      open[d.getAttribute("data-key")] = true;
    });
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var fresh = holder.firstElementChild;
    if (!fresh) return;
    fresh.querySelectorAll("details[data-key]").forEach(function (d) {
      if (open[d.getAttribute("data-key")]) d.open = true;
    });
    localTimes(fresh);
    old.replaceWith(fresh);
  }

  function again() {
    // back off while the service does not answer, up to 30 s
    setTimeout(tick, Math.min(every * Math.pow(2, failures), 30000));
  }

  function tick() {
    if (document.hidden) { again(); return; }  // nobody is looking: no reads
    fetch(url, {credentials: "same-origin", cache: "no-store",
                headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) throw new Error("logged out: reload the page to log in");
        if (!r.ok) throw new Error("the service answered " + r.status);
        return r.json();
      })
      .then(function (data) {
        failures = 0;
        Object.keys(data.fragments).forEach(function (id) { swap(id, data.fragments[id]); });
        say("live · " + new Date().toLocaleTimeString());
      })
      .catch(function (err) {
        failures += 1;
        say("not updating: " + err.message, true);
      })
      .then(again);
  }

  say("live");
  again();
})();
