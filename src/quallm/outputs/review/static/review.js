// quallm review: the page. Every piece of transcript text goes in with textContent, never as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="quallm-csrf"]').content;
  const $ = (id) => document.getElementById(id);
  const st = { session: null, codes: {}, items: [], added: [], current: 0, progress: null };

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function saved(text, kind) {
    const s = $("saved");
    s.textContent = text;
    s.className = kind;
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  // A decision is shown as saved only once the server answers: it answers after the fsync.
  async function post(decision) {
    saved("saving…", "busy");
    try {
      const r = await fetch("/api/decisions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Quallm-CSRF": csrf, Accept: "application/json" },
        body: JSON.stringify(decision),
      });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      const d = body.decision;
      const what = d.action === "undo" ? "undone" : d.action;
      saved("saved: " + what + (d.code_id ? " " + d.code_id : "") + " (" + d.transcript_id + ")", "ok");
      return d;
    } catch (err) {
      saved("not saved: " + err.message, "err");
      return null;
    }
  }

  function filters() {
    const q = new URLSearchParams();
    if ($("f-code").value) q.set("code", $("f-code").value);
    if ($("f-transcript").value) q.set("transcript", $("f-transcript").value);
    q.set("status", $("f-status").value);
    q.set("candidates", $("f-cand").checked ? "1" : "0");
    return q.toString();
  }

  async function refresh(selectId) {
    const [items, progress] = await Promise.all([getJSON("/api/items?" + filters()), getJSON("/api/progress")]);
    st.items = items.items;
    st.added = items.added;
    st.progress = progress;
    if (selectId) {
      const i = st.items.findIndex((it) => it.id === selectId);
      if (i >= 0) st.current = i;
    }
    st.current = Math.max(0, Math.min(st.current, st.items.length - 1));
    render();
  }

  function codeLabel(id) {
    const c = st.codes[id];
    return c ? c.label : id;
  }

  function renderQueue() {
    const list = $("queue-list");
    list.replaceChildren();
    st.items.forEach((it, i) => {
      const li = el("li", null, it.status + (i === st.current ? " current" : ""));
      li.dataset.id = it.id;
      li.append(el("span", it.transcript_id + " · " + codeLabel(it.code_id)));
      if (it.candidate) li.append(el("span", "candidate", "badge candidate"));
      if (it.probability !== null) li.append(el("span", it.probability.toFixed(2), "p"));
      li.addEventListener("click", () => { st.current = i; render(); });
      list.append(li);
    });
    $("queue-count").textContent = "(" + st.items.length + ")";
    const cur = list.children[st.current];
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  function renderDefinition(code) {
    const box = $("code-def");
    box.replaceChildren();
    if (!code) return;
    box.append(el("div", code.definition));
    for (const [title, notes] of [["Include", code.include], ["Exclude", code.exclude]]) {
      if (!notes.length) continue;
      box.append(el("strong", title));
      const ul = el("ul");
      notes.forEach((n) => ul.append(el("li", n)));
      box.append(ul);
    }
  }

  function renderItem() {
    const it = st.items[st.current];
    $("empty").hidden = !!it;
    $("card").hidden = !it;
    if (!it) return;
    const code = st.codes[it.code_id];
    $("item-code").textContent = (code ? code.label : it.code_id) + " (" + it.code_id + ")";
    const badges = $("item-badges");
    badges.replaceChildren();
    let status = it.status;
    if (it.status === "recoded" && it.decision) status += " to " + it.decision.code_id;
    badges.append(el("span", status, "badge " + it.status));
    if (it.candidate) badges.append(el("span", "candidate below the threshold", "badge candidate"));
    if (it.probability !== null) badges.append(el("span", "p = " + it.probability.toFixed(3), "badge"));
    renderDefinition(code);
    $("item-where").textContent = it.transcript_id + (it.turn_index !== null ? ", turn " + it.turn_index : "") +
      (it.start !== null ? ", characters " + it.start + "–" + it.end : "");
    const ctx = it.context || {};
    const q = $("question");
    q.replaceChildren();
    q.hidden = !ctx.question;
    if (ctx.question) {
      q.append(el("span", ctx.question.speaker, "speaker"), document.createTextNode(ctx.question.text));
    }
    const t = $("turn-text");
    t.replaceChildren();
    if (ctx.turn) {
      $("turn-speaker").textContent = ctx.turn.speaker;
      t.append(document.createTextNode(ctx.turn.before), el("mark", ctx.turn.quote),
        document.createTextNode(ctx.turn.after));
    }
    $("rationale").textContent = it.rationale ? "Model's rationale: " + it.rationale : "";
    $("recode-code").value = it.status === "recoded" && it.decision ? it.decision.code_id : it.code_id;
    const mine = st.added.filter((a) => a.transcript_id === it.transcript_id);
    const list = $("added-list");
    list.replaceChildren();
    mine.forEach((a) => list.append(el("li", codeLabel(a.code_id) + ": “" + a.quote + "”")));
    $("added-box").hidden = mine.length === 0;
    const row = st.progress.transcripts.find((r) => r.transcript_id === it.transcript_id);
    $("b-reviewed").disabled = !!(row && row.reviewed);
    $("b-reviewed").lastChild.textContent = row && row.reviewed ? " Transcript reviewed" : " Mark transcript reviewed";
  }

  function cell(row, text, cls) {
    const td = el("td", text, cls);
    row.append(td);
    return td;
  }

  function renderProgress() {
    const p = st.progress;
    $("overall").textContent = p.decided + " of " + p.items + " decided";
    const codes = $("p-codes").tBodies[0];
    codes.replaceChildren();
    for (const c of p.codes) {
      const tr = el("tr");
      tr.title = c.label;
      cell(tr, c.code_id);
      const td = cell(tr, c.decided + "/" + c.items, "num");
      const bar = el("progress");
      bar.max = Math.max(c.items, 1);
      bar.value = c.decided;
      td.prepend(bar);
      for (const k of ["accepted", "rejected", "recoded", "added"]) cell(tr, c[k], "num");
      codes.append(tr);
    }
    const trs = $("p-transcripts").tBodies[0];
    trs.replaceChildren();
    for (const t of p.transcripts) {
      const tr = el("tr");
      cell(tr, t.transcript_id);
      cell(tr, t.decided + "/" + t.items, "num");
      cell(tr, t.added, "num");
      cell(tr, t.reviewed ? "✓ reviewed" : "");
      trs.append(tr);
    }
  }

  function render() {
    renderQueue();
    renderItem();
    renderProgress();
  }

  function nextPendingId() {
    for (let i = st.current + 1; i < st.items.length; i++) if (st.items[i].status === "pending") return st.items[i].id;
    const nxt = st.items[st.current + 1];
    return nxt ? nxt.id : null;
  }

  async function decideItem(action, extra) {
    const it = st.items[st.current];
    if (!it) return;
    const next = nextPendingId();
    const d = await post(Object.assign({ action: action, item: it.id }, extra || {}));
    if (d) await refresh(next || it.id);
  }

  function recode() {
    const it = st.items[st.current];
    const code = $("recode-code").value;
    if (!it) return;
    if (code === it.code_id) {
      $("recode-code").focus();
      saved("choose another code, then press Enter", "err");
      return;
    }
    $("recode-code").blur();  // the keys work again at once
    decideItem("recode", { code_id: code });
  }

  // The selection inside the turn as UTF-16 offsets into the turn's text (the server converts them).
  function selectionOffsets() {
    const sel = window.getSelection();
    const box = $("turn-text");
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
    const range = sel.getRangeAt(0);
    if (!box.contains(range.startContainer) || !box.contains(range.endContainer)) return null;
    const pre = document.createRange();
    pre.selectNodeContents(box);
    pre.setEnd(range.startContainer, range.startOffset);
    const start = pre.toString().length;
    return { start: start, end: start + range.toString().length };
  }

  async function addSelection() {
    const it = st.items[st.current];
    if (!it || !it.context.turn) return;
    const off = selectionOffsets();
    if (!off) {
      saved("select words in the turn first", "err");
      return;
    }
    const d = await post({
      action: "add", transcript_id: it.transcript_id, turn_index: it.context.turn.index,
      start: off.start, end: off.end, offsets: "utf16", code_id: $("add-code").value,
    });
    if (d) {
      window.getSelection().removeAllRanges();
      await refresh(it.id);
    }
  }

  async function markReviewed() {
    const it = st.items[st.current];
    if (!it) return;
    const d = await post({ action: "reviewed", transcript_id: it.transcript_id });
    if (d) await refresh(it.id);
  }

  async function undo() {
    const d = await post({ action: "undo" });
    if (d) await refresh(d.item || (st.items[st.current] || {}).id);
  }

  function move(by) {
    st.current = Math.max(0, Math.min(st.items.length - 1, st.current + by));
    render();
  }

  function fillSelect(select, options, keepFirst) {
    if (!keepFirst) select.replaceChildren();
    for (const [value, text] of options) {
      const o = el("option", text);
      o.value = value;
      select.append(o);
    }
  }

  function bind() {
    $("b-accept").addEventListener("click", () => decideItem("accept"));
    $("b-reject").addEventListener("click", () => decideItem("reject"));
    $("b-recode").addEventListener("click", recode);
    $("b-add").addEventListener("click", addSelection);
    $("b-reviewed").addEventListener("click", markReviewed);
    $("b-undo").addEventListener("click", undo);
    $("b-prev").addEventListener("click", () => move(-1));
    $("b-next").addEventListener("click", () => move(1));
    for (const id of ["f-code", "f-transcript", "f-status", "f-cand"]) {
      $(id).addEventListener("change", () => { st.current = 0; refresh(); });
    }
    $("recode-code").addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); recode(); }
      if (e.key === "Escape") { e.preventDefault(); $("recode-code").blur(); }
    });
    $("add-code").addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); addSelection(); }
    });
    document.addEventListener("keydown", (e) => {
      const tag = e.target.tagName;
      if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA" || e.altKey || e.metaKey) return;
      if (e.ctrlKey) {
        if (e.key === "z") { e.preventDefault(); undo(); }
        return;
      }
      const keys = {
        a: () => decideItem("accept"), r: () => decideItem("reject"), c: () => $("recode-code").focus(),
        s: addSelection, t: markReviewed, u: undo, j: () => move(1), k: () => move(-1),
      };
      const fn = keys[e.key];
      if (fn) { e.preventDefault(); fn(); }
    });
  }

  async function start() {
    bind();
    try {
      st.session = await getJSON("/api/session");
    } catch (err) {
      saved("cannot load the session: " + err.message, "err");
      return;
    }
    st.session.codebook.forEach((c) => { st.codes[c.id] = c; });
    const codeOptions = st.session.codebook.map((c) => [c.id, c.label + " (" + c.id + ")"]);
    fillSelect($("f-code"), codeOptions, true);
    fillSelect($("recode-code"), codeOptions);
    fillSelect($("add-code"), codeOptions);
    fillSelect($("f-transcript"), st.session.transcripts.map((t) => [t, t]), true);
    const notes = st.session.notices.slice();
    if (st.session.corrupt_lines) {
      notes.push(st.session.corrupt_lines + " line(s) of review.jsonl could not be read and were skipped: " +
        st.session.log_problems.join(" | "));
    }
    $("notices").replaceChildren(...notes.map((n) => el("div", n)));
    await refresh();
  }

  start();
})();
