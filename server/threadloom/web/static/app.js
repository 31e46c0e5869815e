// threadloom inspector: paging on scroll, live tail over Server-Sent Events, tool results
// beside their calls. Plain JavaScript; every HTML fragment comes escaped from the server.
(function () {
  "use strict";
  var ID = /^[a-f0-9]{12}$/;

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  // A tool result rendered on its own (a later page, or live) moves beside its call.
  function pairResults(root) {
    var orphans = (root || document).querySelectorAll(".tool-result[data-for]");
    orphans.forEach(function (res) {
      var id = res.getAttribute("data-for");
      var calls = document.querySelectorAll("details.tool.pending");
      for (var i = 0; i < calls.length; i++) {
        if (calls[i].getAttribute("data-tool-id") !== id) continue;
        var call = calls[i], slot = call.querySelector(".out-slot"), out = res.querySelector(".out");
        if (!slot || !out) return;
        slot.replaceChildren(out);
        call.classList.remove("pending");
        var state = call.querySelector(".tool-state");
        var err = out.classList.contains("error");
        if (err) call.classList.add("has-error");
        if (state) {
          var b = document.createElement("span");
          b.className = "badge " + (err ? "st-error" : "st-ok");
          b.textContent = err ? "error" : "ok";
          state.replaceChildren(b);
        }
        res.remove();
        return;
      }
    });
  }

  function setStatus(info) {
    var badge = document.querySelector("#status-badge .badge");
    if (badge) {
      badge.className = "badge st-" + info.status;
      badge.textContent = info.status;
      badge.setAttribute("data-status", info.status);
    }
    var text = document.getElementById("status-text");
    if (text) text.textContent = info.status;
    var count = document.getElementById("event-count");
    if (count) count.textContent = Number(info.event_count).toLocaleString("en");
    var cost = document.getElementById("cost");
    if (cost && info.cost !== null && info.cost !== undefined) cost.textContent = String(info.cost);
  }

  function threadPage(root) {
    var tid = root.getAttribute("data-thread-id");
    var timeline = document.getElementById("timeline");
    var more = document.getElementById("more");
    var lastSeq = Number(root.getAttribute("data-last-seq"));
    var hasMore = root.getAttribute("data-has-more") === "1";
    var loading = false;
    var pendingLive = false; // live events arrived while paging: page once more at the end

    function append(html, flash) {
      var frag = fragment(html);
      var nodes = Array.prototype.slice.call(frag.children);
      var keep = document.createDocumentFragment();
      nodes.forEach(function (n) {
        var seq = Number(n.getAttribute("data-seq"));
        if (seq && seq <= lastSeq) return; // already on the page
        if (seq) lastSeq = Math.max(seq, Number(n.getAttribute("data-end-seq")) || 0);
        if (flash) n.classList.add("new");
        keep.appendChild(n);
      });
      var none = document.getElementById("no-events");
      if (none && keep.childNodes.length) none.remove();
      var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
      timeline.appendChild(keep);
      pairResults(timeline);
      if (flash && atBottom) window.scrollTo(0, document.body.scrollHeight);
    }

    function loadMore() {
      if (loading || !hasMore) return;
      loading = true;
      fetch("/t/" + tid + "/events?after=" + lastSeq, { credentials: "same-origin" })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          hasMore = r.headers.get("x-has-more") === "1";
          return r.text();
        })
        .then(function (html) {
          append(html, false);
          loading = false;
          if (!hasMore && pendingLive) { pendingLive = false; hasMore = true; loadMore(); return; }
          more.hidden = !hasMore;
          if (hasMore && more.getBoundingClientRect().top < window.innerHeight + 600) loadMore();
        })
        .catch(function () { loading = false; setTimeout(loadMore, 2000); });
    }

    if (hasMore && "IntersectionObserver" in window) {
      new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) loadMore();
      }, { rootMargin: "600px" }).observe(more);
    }

    var firstSeq = Number(root.getAttribute("data-first-seq")) || 1;
    var earlier = document.getElementById("earlier");
    if (earlier) {
      earlier.addEventListener("click", function () {
        if (loading) return;
        loading = true;
        fetch("/t/" + tid + "/events?before=" + firstSeq, { credentials: "same-origin" })
          .then(function (r) {
            if (!r.ok) throw new Error("HTTP " + r.status);
            firstSeq = Number(r.headers.get("x-first-seq")) || 1;
            return r.text();
          })
          .then(function (html) {
            var frag = fragment(html), keep = document.createDocumentFragment();
            Array.prototype.slice.call(frag.children).forEach(function (n) { keep.appendChild(n); });
            var height = document.body.scrollHeight;
            timeline.insertBefore(keep, timeline.firstChild);
            window.scrollBy(0, document.body.scrollHeight - height); // keep the reader's place
            pairResults(timeline);
            loading = false;
            if (firstSeq <= 1) earlier.remove();
            else earlier.textContent = "Load " + (firstSeq - 1).toLocaleString("en") + " earlier event(s)";
          })
          .catch(function () { loading = false; });
      });
    }

    var verify = document.getElementById("verify");
    if (verify) {
      fetch(verify.getAttribute("data-url"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) { verify.replaceChildren(fragment(html)); })
        .catch(function () { verify.textContent = "verify unavailable"; });
    }

    if (root.getAttribute("data-live") === "1" && window.EventSource) {
      var state = document.getElementById("live-state");
      var es = new EventSource("/t/" + tid + "/live?after=" + root.getAttribute("data-after"));
      es.addEventListener("open", function () { if (state) { state.textContent = "live"; state.classList.add("on"); } });
      es.addEventListener("error", function () { if (state) state.classList.remove("on"); });
      es.addEventListener("events", function (e) {
        if (hasMore || loading) { pendingLive = true; return; } // paging will bring these
        var first = fragment(e.data).firstElementChild;
        var seq = first ? Number(first.getAttribute("data-seq")) : 0;
        if (seq > lastSeq + 1) { hasMore = true; loadMore(); return; } // a gap: read it in order
        append(e.data, true);
      });
      es.addEventListener("thread", function (e) { setStatus(JSON.parse(e.data)); });
      es.addEventListener("hop", function (e) {
        var next = JSON.parse(e.data).thread_id;
        es.close();
        if (ID.test(next)) {
          if (state) state.textContent = "following the handoff to " + next + "…";
          window.location.assign("/t/" + next);
        }
      });
      es.addEventListener("gone", function () { es.close(); if (state) state.textContent = "thread deleted"; });
      window.addEventListener("pagehide", function () { es.close(); });
    }
    pairResults(timeline);
  }

  function liveRows() {
    var tables = document.querySelectorAll("table[data-live-ids]");
    var ids = [], parent = null, kids = null;
    tables.forEach(function (t) {
      (t.getAttribute("data-live-ids") || "").split(",").forEach(function (id) { if (ID.test(id)) ids.push(id); });
      var p = t.getAttribute("data-live-parent");
      if (p && ID.test(p)) { parent = p; kids = t; }
    });
    if ((!ids.length && !parent) || !window.EventSource) return;
    var es = new EventSource("/live/threads?ids=" + ids.join(",") + (parent ? "&parent=" + parent : ""));
    es.addEventListener("row", function (e) {
      var msg = JSON.parse(e.data);
      if (!ID.test(msg.thread_id)) return;
      var row = fragment("<table><tbody>" + msg.html + "</tbody></table>").querySelector("tr");
      if (!row) return;
      row.classList.add("flash");
      var old = document.getElementById("row-" + msg.thread_id);
      if (old) { old.replaceWith(row); return; }
      if (kids && msg.parent_id === parent) { // a child created since the page was drawn
        kids.tBodies[0].appendChild(row);
        kids.closest("section").hidden = false;
      }
    });
    window.addEventListener("pagehide", function () { es.close(); });
  }

  // Paint first, then start the work that talks to the server (verify, paging, live
  // streams): on a busy machine that work would otherwise delay the first screen.
  function afterFirstPaint(fn) {
    requestAnimationFrame(function () { setTimeout(fn, 0); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    afterFirstPaint(function () {
      var root = document.getElementById("thread");
      if (root) threadPage(root);
      liveRows();
    });
  });
})();
