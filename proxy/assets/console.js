// keyhop console: keeps the expiry countdowns ticking. The page works without it: the
// server writes the same words when it renders (proxy/console_view.py, span()).
"use strict";
(function () {
  function span(seconds) {
    var s = Math.floor(Math.abs(seconds));
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s >= 86400) return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
    if (s >= 3600) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    return s + " s";
  }
  function tick() {
    var now = Date.now() / 1000;
    var times = document.querySelectorAll("time[data-at]");
    for (var i = 0; i < times.length; i++) {
      var at = Number(times[i].getAttribute("data-at"));
      times[i].textContent = at > now ? "in " + span(at - now) : span(now - at) + " ago";
    }
  }
  setInterval(tick, 1000);
})();
