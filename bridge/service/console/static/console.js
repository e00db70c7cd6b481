// The console's one script: refresh the page's live part every few seconds, and send the
// buttons' actions to /api as JSON POSTs. Without it the pages still read (and page) fine.
"use strict";

(function () {
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  let busy = false;

  function say(text, bad) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = bad ? "bad shown" : "shown";
  }

  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(location.href, {
        headers: { "X-Bridge-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (answer.status === 401) {
        location.reload(); // signed out: the page shows the sign-in form
        return;
      }
      if (!answer.ok) return;
      const html = await answer.text();
      // Keep open what the reader opened.
      const open = Array.from(live.querySelectorAll("details[open][id]"), (d) => d.id);
      live.innerHTML = html;
      for (const id of open) {
        const d = document.getElementById(id);
        if (d) d.open = true;
      }
    } catch (e) {
      say("the daemon does not answer: " + e.message, true);
    } finally {
      busy = false;
    }
  }

  async function act(button) {
    const confirmText = button.dataset.confirm;
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      const answer = await fetch(button.dataset.post, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: button.dataset.body || "{}",
        credentials: "same-origin",
      });
      const data = await answer.json();
      say(answer.ok ? data.message : data.error, !answer.ok);
    } catch (e) {
      say("the request failed: " + e.message, true);
    } finally {
      button.disabled = false;
    }
    await refresh();
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-post]");
    if (button) {
      event.preventDefault();
      act(button);
    }
  });

  const every = live ? Number(live.dataset.refresh || 0) : 0;
  if (every > 0) {
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", refresh);
  }
})();
