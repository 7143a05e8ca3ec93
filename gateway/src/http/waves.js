// The bed view's live curves and alarm snippets (issue 19).
//
// - Live: `/api/beds/<bed>/waves` (server-sent events) brings each channel's new samples every
//   200 ms as integers with their scale, first-sample time, period and gap runs. Each channel
//   gets a canvas, drawn as a bedside monitor sweeps: left to right over SWEEP_S seconds, an
//   erase bar ahead of the pen, one requestAnimationFrame step at a time. What is drawn lags the
//   gateway's clock by a small delay buffer (the longest a segment has taken to arrive, plus
//   MARGIN_US, at least MIN_DELAY_US), so the pen never waits for data that is on its way and
//   never stutters. A gap (no sample) is left blank, never drawn as a line to zero.
// - Scale from the physical units: ECG in mV and pressures in mmHg on fixed scales, others
//   (the pleth) scaled to what the last sweep showed. The scale is written on each curve.
// - Snippets: clicking an alarm in the alarm history shows the ±15 s around its start as
//   static curves, with the gateway's words while the snippet is still being collected.
// `window.icuWaves` reports what arrived and what was drawn (for the browser test).
(() => {
  const SWEEP_S = 6;
  const MIN_DELAY_US = 1000000;
  const MARGIN_US = 300000;
  const MAX_DELAY_US = 10000000;
  const ERASE_PX = 14;
  const ORDER = [131330, 131329, 131389, 150452, 150036, 150016, 150033];
  const LABEL = {131329: 'ECG I', 131330: 'ECG II', 131389: 'ECG III', 150452: 'Pleth', 150036: 'ABP', 150033: 'ABP', 150016: 'ART'};
  const COLOUR = {mV: '#5fd38d', 'mm[Hg]': '#ff6b6b', '': '#27c4d9', '1': '#27c4d9'};
  const FIXED = {mV: [-1.0, 2.0], 'mm[Hg]': [0, 180]};
  const UNIT_TEXT = {'mm[Hg]': 'mmHg', '1': '', 'mV': 'mV'};
  const $ = id => document.getElementById(id);
  const bed = decodeURIComponent(location.pathname.replace(/^\/beds\//, ''));
  const stat = window.icuWaves = {frames: 0, segments: 0, samples: 0, dropped: 0, channels: 0, drawn: 0, link: 'connecting', snippet: null};

  // --- decoding -------------------------------------------------------------------------
  function decode(seg) {
    const bin = atob(seg.d);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const view = new DataView(bytes.buffer);
    const wide = seg.f === 'i32';
    const present = wide ? bytes.length / 4 : bytes.length / 2;
    const vals = new Float32Array(seg.n).fill(NaN);
    const missing = new Uint8Array(seg.n);
    for (const [s, c] of seg.gaps) missing.fill(1, s, Math.min(seg.n, s + c));
    let k = 0;
    for (let i = 0; i < seg.n && k < present; i++) {
      if (missing[i]) continue;
      const raw = wide ? view.getInt32(k * 4, true) : view.getInt16(k * 2, true);
      vals[i] = raw * seg.k + seg.o;
      k++;
    }
    return {t0: seg.t0, p: seg.p, n: seg.n, vals, end: seg.t0 + seg.n * seg.p};
  }
  const rank = code => { const i = ORDER.indexOf(code); return i < 0 ? ORDER.length : i; };
  const labelOf = m => LABEL[m.code] || (m.refid || `MDC ${m.code}`).replace(/^MDC_/, '');
  const unitText = u => (u in UNIT_TEXT ? UNIT_TEXT[u] : u || '');
  function fixedRange(meta) { return FIXED[meta.unit] || null; }

  // --- live -----------------------------------------------------------------------------
  const chans = new Map();   // c -> channel
  let offsetUs = null;       // gateway clock - browser clock (µs), best estimate
  let delayUs = MIN_DELAY_US;
  const gatewayNow = () => Date.now() * 1000 + (offsetUs || 0);

  function makeChannel(meta) {
    const fig = document.createElement('figure');
    fig.className = 'wave';
    fig.dataset.code = String(meta.code);
    const cap = document.createElement('figcaption');
    const canvas = document.createElement('canvas');
    canvas.className = 'wave';
    canvas.dataset.code = String(meta.code);
    fig.append(cap, canvas);
    const ch = {meta, fig, cap, canvas, ctx: canvas.getContext('2d'), segs: [], lastT: null, lastPt: null,
      range: fixedRange(meta), seenLo: Infinity, seenHi: -Infinity, width: 0, height: 0};
    const box = $('waves');
    const after = [...box.children].find(f => rank(Number(f.dataset.code)) > rank(meta.code));
    box.insertBefore(fig, after || null);
    caption(ch);
    return ch;
  }
  function caption(ch) {
    const r = ch.range;
    const scale = r ? `${+r[0].toFixed(2)} to ${+r[1].toFixed(2)} ${unitText(ch.meta.unit)}${fixedRange(ch.meta) ? '' : ' (auto)'}` : 'scaling…';
    ch.cap.textContent = `${labelOf(ch.meta)} · ${ch.meta.rate_hz} Hz · ${scale} · ${ch.meta.device}`;
  }
  // Sizes the canvas to its box; true when that changed (and so cleared it).
  function fit(ch) {
    const w = Math.max(100, Math.floor(ch.canvas.clientWidth)), h = Math.max(40, Math.floor(ch.canvas.clientHeight));
    if (w === ch.width && h === ch.height) return false;
    ch.canvas.width = ch.width = w;
    ch.canvas.height = ch.height = h;
    ch.lastPt = null;
    return true;
  }
  const xOf = (ch, t) => ((t / 1e6) % SWEEP_S) / SWEEP_S * ch.width;
  function yOf(ch, v) {
    const [lo, hi] = ch.range;
    return ch.height - 2 - (ch.height - 4) * (v - lo) / ((hi - lo) || 1);
  }
  function erase(ch, x0, x1) {
    const ctx = ch.ctx;
    if (x1 >= x0) ctx.clearRect(x0, 0, x1 - x0 + ERASE_PX, ch.height);
    else { ctx.clearRect(x0, 0, ch.width - x0, ch.height); ctx.clearRect(0, 0, x1 + ERASE_PX, ch.height); }
    if (x1 + ERASE_PX > ch.width) ctx.clearRect(0, 0, x1 + ERASE_PX - ch.width, ch.height);
  }
  // Draws the channel's samples in (from, to].
  function drawSpan(ch, from, to) {
    erase(ch, xOf(ch, from), xOf(ch, to));
    if (!ch.range) {
      // Scale a free channel to what has arrived, then per sweep.
      for (const s of ch.segs) for (const v of s.vals) if (!Number.isNaN(v)) { ch.seenLo = Math.min(ch.seenLo, v); ch.seenHi = Math.max(ch.seenHi, v); }
      if (ch.seenLo > ch.seenHi) return;
      const pad = (ch.seenHi - ch.seenLo) * 0.1 || 1;
      ch.range = [ch.seenLo - pad, ch.seenHi + pad];
      ch.seenLo = Infinity; ch.seenHi = -Infinity;
      caption(ch);
    }
    const ctx = ch.ctx;
    ctx.strokeStyle = COLOUR[ch.meta.unit] || '#27c4d9';
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let prev = ch.lastPt;
    if (prev) ctx.moveTo(prev.x, prev.y);
    let drawn = 0;
    for (const s of ch.segs) {
      if (s.end <= from || s.t0 > to) continue;
      const i0 = Math.max(0, Math.floor((from - s.t0) / s.p) + 1), i1 = Math.min(s.n - 1, Math.floor((to - s.t0) / s.p));
      for (let i = i0; i <= i1; i++) {
        const t = s.t0 + i * s.p;
        if (t <= from) continue;
        const v = s.vals[i];
        if (Number.isNaN(v)) { prev = null; continue; }
        ch.seenLo = Math.min(ch.seenLo, v); ch.seenHi = Math.max(ch.seenHi, v);
        const x = xOf(ch, t), y = yOf(ch, Math.min(ch.range[1], Math.max(ch.range[0], v)));
        // A new sweep or a pause longer than two periods starts a new line.
        if (prev && x >= prev.x && t - prev.t <= 2.5 * s.p) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        prev = {x, y, t};
        drawn++;
      }
    }
    ctx.stroke();
    ch.lastPt = prev;
    if (ch.lastT !== null && xOf(ch, to) < xOf(ch, ch.lastT) && !fixedRange(ch.meta) && ch.seenLo <= ch.seenHi) {
      // A sweep ended: a free channel takes the scale of the sweep just drawn.
      const pad = (ch.seenHi - ch.seenLo) * 0.1 || 1;
      ch.range = [ch.seenLo - pad, ch.seenHi + pad];
      ch.seenLo = Infinity; ch.seenHi = -Infinity;
      caption(ch);
    }
    stat.drawn += drawn;
  }
  function tick() {
    const at = gatewayNow() - delayUs;
    for (const ch of chans.values()) {
      if (ch.lastT === null) ch.lastT = at - 1;
      // A resized canvas is blank: draw its whole sweep again (the last SWEEP_S are kept).
      if (fit(ch)) ch.lastT = Math.min(ch.lastT, at - SWEEP_S * 1e6 + 1);
      if (at > ch.lastT) {
        // After a long pause (a hidden tab) draw at most one sweep.
        const from = Math.max(ch.lastT, at - SWEEP_S * 1e6 + 1);
        drawSpan(ch, from, at);
        ch.lastT = at;
      }
      while (ch.segs.length && ch.segs[0].end < at - SWEEP_S * 1e6) ch.segs.shift();
    }
    requestAnimationFrame(tick);
  }
  function onFrame(ev) {
    const f = JSON.parse(ev.data);
    const seen = f.now_us - Date.now() * 1000;
    // Transit time only adds: the largest difference is the closest to the clocks' offset.
    offsetUs = offsetUs === null ? seen : Math.max(offsetUs - 2000, seen);
    for (const m of f.channels) {
      if (!chans.has(m.c)) chans.set(m.c, makeChannel(m));
    }
    for (const s of f.segs) {
      const ch = chans.get(s.c);
      if (!ch) continue;
      const d = decode(s);
      ch.segs.push(d);
      stat.segments++;
      stat.samples += d.n;
      // The delay buffer: long enough for a whole segment to arrive before the pen gets there
      // (the first frame's backfill of older segments does not count).
      const lag = f.now_us - d.t0 + MARGIN_US;
      if (live && lag > delayUs && lag < MAX_DELAY_US) delayUs = lag;
    }
    for (const ch of chans.values()) ch.segs.sort((a, b) => a.t0 - b.t0);
    live = true;
    stat.frames++;
    stat.dropped = f.dropped;
    stat.channels = chans.size;
    stat.delay_ms = Math.round(delayUs / 1000);
    stat.link = 'live';
    $('waves-note').textContent = chans.size ? `live, ${(delayUs / 1e6).toFixed(1)} s behind the monitor${f.dropped ? ` · ${f.dropped} segments skipped (slow connection)` : ''}` : 'no curves from this bed';
  }
  let source = null, live = false;
  function open() {
    live = false;
    source = new EventSource(`/api/beds/${encodeURIComponent(bed)}/waves`);
    source.addEventListener('frame', onFrame);
    source.onerror = () => {
      stat.link = 'lost';
      $('waves-note').textContent = 'CURVES LOST: reconnecting…';
      source.close();
      for (const ch of chans.values()) { ch.segs = []; ch.lastPt = null; }
      setTimeout(open, 2000);
    };
  }
  open();
  requestAnimationFrame(tick);

  // --- snippets -------------------------------------------------------------------------
  function drawStatic(box, answer) {
    box.replaceChildren();
    const metas = new Map(answer.channels.map(m => [m.c, m]));
    const bych = new Map();
    for (const s of answer.segs) { const d = decode(s); (bych.get(s.c) || bych.set(s.c, []).get(s.c)).push(d); }
    const from = answer.window_start_us, to = answer.window_end_us;
    const order = [...bych.keys()].sort((a, b) => rank(metas.get(a).code) - rank(metas.get(b).code));
    let drawn = 0;
    for (const c of order) {
      const meta = metas.get(c), segs = bych.get(c).sort((a, b) => a.t0 - b.t0);
      const fig = document.createElement('figure');
      fig.className = 'wave';
      const cap = document.createElement('figcaption');
      const canvas = document.createElement('canvas');
      canvas.className = 'wave snippet';
      fig.append(cap, canvas);
      box.append(fig);
      const W = canvas.width = Math.max(200, canvas.clientWidth), H = canvas.height = Math.max(40, canvas.clientHeight);
      let range = fixedRange(meta);
      if (!range) {
        let lo = Infinity, hi = -Infinity;
        for (const s of segs) for (const v of s.vals) if (!Number.isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
        const pad = (hi - lo) * 0.1 || 1;
        range = lo <= hi ? [lo - pad, hi + pad] : [0, 1];
      }
      cap.textContent = `${labelOf(meta)} · ${+range[0].toFixed(2)} to ${+range[1].toFixed(2)} ${unitText(meta.unit)}`;
      const ctx = canvas.getContext('2d');
      const x = t => (t - from) / (to - from) * W;
      const y = v => H - 2 - (H - 4) * (Math.min(range[1], Math.max(range[0], v)) - range[0]) / ((range[1] - range[0]) || 1);
      ctx.strokeStyle = '#f5c518';
      ctx.beginPath(); ctx.moveTo(x(answer.alarm_start_us), 0); ctx.lineTo(x(answer.alarm_start_us), H); ctx.stroke();
      ctx.strokeStyle = COLOUR[meta.unit] || '#27c4d9';
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      let prev = null;
      for (const s of segs) {
        for (let i = 0; i < s.n; i++) {
          const t = s.t0 + i * s.p, v = s.vals[i];
          if (t < from || t >= to || Number.isNaN(v)) { prev = null; continue; }
          const px = x(t), py = y(v);
          if (prev !== null && t - prev <= 2.5 * s.p) ctx.lineTo(px, py); else ctx.moveTo(px, py);
          prev = t;
          drawn++;
        }
      }
      ctx.stroke();
    }
    return drawn;
  }
  async function showSnippet(alarmId, startUs, text) {
    const panel = $('snippet');
    panel.hidden = false;
    $('snippet-title').textContent = `${text || alarmId}: ±15 s around ${new Date(startUs / 1000).toLocaleTimeString()}`;
    $('snippet-msg').textContent = 'loading…';
    const r = await fetch(`/api/beds/${encodeURIComponent(bed)}/alarms/${encodeURIComponent(alarmId)}/snippet?start_us=${startUs}`, {headers: {'x-icu-background': '1'}});
    if (!r.ok) { $('snippet-msg').textContent = `cannot load the snippet: ${r.status} ${await r.text()}`; return; }
    const a = await r.json();
    const drawn = a.segs.length ? drawStatic($('snippet-curves'), a) : ($('snippet-curves').replaceChildren(), 0);
    $('snippet-msg').textContent = a.message;
    $('snippet-msg').dataset.state = a.state;
    stat.snippet = {alarm: alarmId, state: a.state, segments: a.segs.length, drawn};
  }
  $('snippet-close').addEventListener('click', () => { $('snippet').hidden = true; });
  document.addEventListener('click', ev => {
    const tr = ev.target.closest('#alarm-history tr[data-alarm]');
    if (!tr) return;
    // The alarm's start: its `start` row in the history, else the row clicked.
    const rows = [...document.querySelectorAll('#alarm-history tr[data-alarm]')].filter(r => r.dataset.alarm === tr.dataset.alarm);
    const start = rows.find(r => r.dataset.phase === 'start') || tr;
    showSnippet(tr.dataset.alarm, Number(start.dataset.timeUs), tr.dataset.text).catch(e => { $('snippet-msg').textContent = String(e); });
  });
})();
