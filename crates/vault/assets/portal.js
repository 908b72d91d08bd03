// Lifeboat portal: live notifications (job started, progress, succeeded, failed) from the
// vault's server-sent events, added on top of the notifications area of every page.
(function () {
  var box = document.getElementById("notifications");
  if (!box || !window.EventSource) { return; }
  var list = document.getElementById("notes");
  var es = new EventSource("/portal/events/stream?since=" + encodeURIComponent(box.dataset.since || "0"));
  es.addEventListener("note", function (e) {
    var n;
    try { n = JSON.parse(e.data); } catch (_) { return; }
    var li = document.createElement("li");
    li.className = "note live " + (n.level || "info");
    li.textContent = (n.time || "") + " " + (n.text || "");
    if (n.job) { li.dataset.job = String(n.job); }
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 12) { list.removeChild(list.lastChild); }
    if (n.id) { box.dataset.since = String(n.id); }
  });
  // Leaving the page ends its stream at once: a browser holds few connections per host.
  window.addEventListener("pagehide", function () { es.close(); });
})();
