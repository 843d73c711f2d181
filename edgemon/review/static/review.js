// Keyboard review: move with j/k, play with space, judge with c/w/u or l + a number.
// Verdicts go to /api/verdict; the row shows the stored verdict once the server has it.
(function () {
  "use strict";
  const rows = Array.from(document.querySelectorAll("li.detection"));
  const list = document.querySelector("ol.detections");
  const reviewer = list ? list.dataset.reviewer : "";
  const relabel = document.getElementById("relabel");
  const labelButtons = Array.from(relabel.querySelectorAll("button[data-label]"));
  let current = -1;
  let relabelling = false;

  function select(i) {
    if (!rows.length) return;
    i = Math.max(0, Math.min(rows.length - 1, i));
    if (current >= 0 && current !== i) {
      rows[current].classList.remove("current");
      rows[current].querySelector("audio").pause();
    }
    current = i;
    rows[i].classList.add("current");
    rows[i].focus({ preventScroll: true });
    rows[i].scrollIntoView({ block: "nearest" });
  }

  function play() {
    const audio = rows[current].querySelector("audio");
    if (audio.paused) { audio.play(); } else { audio.pause(); }
  }

  async function judge(verdict, label) {
    const judged = current;
    const row = rows[judged];
    const response = await fetch("/api/verdict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ id: Number(row.dataset.id), key: row.dataset.key, verdict: verdict, label: label || null }),
    });
    const body = await response.json();
    if (!response.ok) { alert(body.error || "verdict not stored"); return; }
    showVerdict(row, body);
    // On to the next row only from the row judged: a key pressed twice before the answer came
    // moved two rows on, the row between never seen.
    if (current === judged) select(judged + 1);
    refreshFromServer();
  }

  function showVerdict(row, v) {
    row.className = row.className.replace(/\bjudged-\w+/g, "").trim() + (v ? " judged-" + v.verdict : "");
    row.dataset.verdict = v ? v.verdict : "";
    row.querySelector(".verdict").textContent = !v ? "" :
      (v.verdict === "relabel" ? "relabel → " + v.new_label : v.verdict) +
      (v.reviewer !== reviewer ? " (by " + v.reviewer + ")" : "");
  }

  // The rows' latest verdicts, whoever gave them: a team's verdicts were seen by the others only
  // on reload, and two reviewers judged the same rows (a team trial). Asked after each verdict,
  // every REFRESH_MS while the page is in view, and when it comes back into view; as for the
  // precision, only the answer to the latest request is shown.
  const REFRESH_MS = 15000;
  let verdictsAsked = 0;
  async function refreshVerdicts() {
    if (!rows.length) return;
    const asked = ++verdictsAsked;
    const response = await fetch("/api/verdicts?ids=" + rows.map(function (r) { return r.dataset.id; }).join(",") +
                                 "&keys=" + rows.map(function (r) { return r.dataset.key; }).join(","),
                                 { credentials: "same-origin" });
    if (!response.ok) return;
    const latest = await response.json();
    if (asked !== verdictsAsked) return;
    // A row left out of the answer is no longer the detection shown (reanalysed, restored): it
    // stays as it was; cleared, a row judged here looked unjudged (a review).
    rows.forEach(function (row) {
      if (Object.prototype.hasOwnProperty.call(latest, row.dataset.id)) showVerdict(row, latest[row.dataset.id]);
    });
  }

  function refreshFromServer() {
    refreshVerdicts();
    refreshPrecision();
  }

  // The precision table as the server counts it now: it was the one of when the page loaded,
  // unchanged by every verdict given since (a team trial).
  // Only the answer to the latest request is shown: verdicts given quickly ask several times, and
  // an earlier answer arriving last put back the counts of before the last verdict (a review).
  let precisionAsked = 0;
  async function refreshPrecision() {
    const asked = ++precisionAsked;
    const bundle = new URLSearchParams(location.search).get("bundle");
    const response = await fetch("/api/precision" + (bundle ? "?bundle=" + encodeURIComponent(bundle) : ""),
                                 { credentials: "same-origin" });
    if (!response.ok) return;
    const counts = await response.json();
    if (asked !== precisionAsked) return;
    for (const c of counts) {
      const tr = Array.from(document.querySelectorAll("table.precision tr[data-label]"))
        .find(function (t) { return t.dataset.label === c.label; });
      if (!tr) continue;
      tr.querySelector(".judged").textContent = c.judged;
      tr.querySelector(".correct").textContent = c.correct;
      tr.querySelector(".share").textContent = c.judged ? c.precision.toFixed(2) : "–";
      tr.querySelector(".bounds").textContent = c.low.toFixed(2) + "–" + c.high.toFixed(2);
      const bar = tr.querySelector(".interval span");
      bar.style.left = (c.low * 100).toFixed(1) + "%";
      bar.style.width = ((c.high - c.low) * 100).toFixed(1) + "%";
    }
  }

  function openRelabel(open) {
    relabelling = open;
    relabel.hidden = !open;
    if (open) rows[current].after(relabel);
  }

  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "SELECT" || event.target.tagName === "INPUT") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (current < 0 && rows.length) select(0);
    if (current < 0) return;
    const key = event.key;
    if (relabelling) {
      const n = Number(key);
      if (n >= 1 && n <= labelButtons.length) { openRelabel(false); judge("relabel", labelButtons[n - 1].dataset.label); }
      else if (key === "Escape") { openRelabel(false); }
      event.preventDefault();
      return;
    }
    const actions = {
      j: () => select(current + 1), ArrowDown: () => select(current + 1),
      k: () => select(current - 1), ArrowUp: () => select(current - 1),
      " ": play, p: play,
      c: () => judge("correct"), w: () => judge("wrong"), x: () => judge("wrong"), u: () => judge("unsure"),
      l: () => openRelabel(true),
    };
    if (actions[key]) { event.preventDefault(); actions[key](); }
  });

  rows.forEach(function (row, i) {
    row.addEventListener("click", function () { if (current !== i) select(i); });
    row.querySelectorAll("button[data-verdict]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.stopPropagation();
        select(i);
        if (button.dataset.verdict === "relabel") { openRelabel(true); } else { judge(button.dataset.verdict); }
      });
    });
    row.querySelector("audio").addEventListener("play", function () { if (current !== i) select(i); });
  });
  labelButtons.forEach(function (button) {
    button.addEventListener("click", function () { openRelabel(false); judge("relabel", button.dataset.label); });
  });
  relabel.querySelector("button[data-cancel]").addEventListener("click", function () { openRelabel(false); });
  setInterval(function () { if (document.visibilityState === "visible") refreshFromServer(); }, REFRESH_MS);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refreshFromServer();
  });
  window.addEventListener("focus", refreshFromServer);
  if (rows.length) select(0);
})();
