(function () {
  "use strict";
  var body = document.body;
  // A page with something running: fetch it again every 2 s and swap its content in.
  // The HTML comes from the server, escaped there; the parsed copy runs no scripts.
  if (body.hasAttribute("data-poll")) {
    var timer = setInterval(function () {
      fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (r) { return r.text(); })
        .then(function (text) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.querySelector("main");
          if (fresh) { document.querySelector("main").replaceWith(document.adoptNode(fresh)); }
          if (!doc.body.hasAttribute("data-poll")) { clearInterval(timer); body.removeAttribute("data-poll"); }
        })
        .catch(function () {});
    }, 2000);
  }
  // A log of a running job: append what it gains, as server-sent events of escaped HTML.
  var follow = body.getAttribute("data-follow");
  if (follow) {
    var log = document.getElementById("log");
    var state = document.getElementById("follow-state");
    var source = new EventSource(follow);
    source.addEventListener("line", function (e) {
      var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      log.insertAdjacentHTML("beforeend", e.data);
      if (atBottom) { window.scrollTo(0, document.body.scrollHeight); }
    });
    source.addEventListener("end", function () {
      source.close();
      if (state) { state.textContent = "job finished"; state.className = "muted"; }
    });
    source.onerror = function () {
      source.close();
      if (state) { state.textContent = "live updates stopped: reload to resume"; state.className = "muted"; }
    };
  }
})();
