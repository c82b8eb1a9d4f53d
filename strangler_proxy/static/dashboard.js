// The dashboard's only script: every few seconds, fetch the traffic panel
// (HTML the server rendered and escaped) and swap it in. Nothing else on the
// page depends on it; without it the page is still complete, just not live.
(function () {
  "use strict";
  var panel = document.getElementById("traffic-live");
  if (!panel) { return; }
  var url = panel.getAttribute("data-refresh-url");
  var every = Number(panel.getAttribute("data-refresh-ms")) || 1500;

  function tick() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) { panel.innerHTML = html; }
      })
      .catch(function () { /* the proxy restarting: try again on the next tick */ })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
