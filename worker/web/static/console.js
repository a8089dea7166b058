// runwarden console: small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Audit log: a row opens its metadata in the side panel without reloading the page
  // (the link still works on its own: the server renders the panel too).
  var panel = document.getElementById("panel");
  var body = document.getElementById("panel-body");
  if (panel && body) {
    document.querySelectorAll("a.open-row").forEach(function (link) {
      link.addEventListener("click", function (event) {
        var source = document.getElementById("meta-" + link.dataset.row);
        if (!source) { return; }
        event.preventDefault();
        body.replaceChildren(source.content.cloneNode(true));
        panel.hidden = false;
        document.querySelectorAll("tr.selected").forEach(function (row) { row.classList.remove("selected"); });
        link.closest("tr").classList.add("selected");
        history.replaceState(null, "", link.href);
      });
    });
    var close = document.getElementById("panel-close");
    if (close) {
      close.addEventListener("click", function (event) {
        event.preventDefault();
        panel.hidden = true;
        history.replaceState(null, "", close.href);
      });
    }
  }

  // Overview: refresh the live part every few seconds.
  var live = document.querySelector("[data-refresh]");
  if (live && window.fetch && window.DOMParser) {
    var seconds = parseInt(live.dataset.refresh, 10) || 15;
    setInterval(function () {
      if (document.hidden) { return; }
      fetch(location.href, { credentials: "same-origin" }).then(function (response) {
        return response.ok ? response.text() : null;
      }).then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-refresh]");
        if (fresh) { live.replaceWith(fresh); live = fresh; }
      }).catch(function () {});
    }, seconds * 1000);
  }
})();
