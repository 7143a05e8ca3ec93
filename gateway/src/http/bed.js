// The bed view: the bed's numerics as trends over the last 1, 8 or 24 hours (the store's
// per-minute rollup, `/api/beds/<bed>/trends`), its alarm history with who acknowledged or
// silenced what, and its limit changes. Text from the gateway only ever goes into textContent.
const $ = id => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
const SVG = 'http://www.w3.org/2000/svg';
const bed = decodeURIComponent(location.pathname.replace(/^\/beds\//, ''));
window.icuBedView = {bed, series: 0, points: 0, hours: 1, history: 0};
async function api(url) {
  const r = await fetch(url, {headers: {'x-icu-background': '1'}});
  if (r.status === 401) { location.href = '/'; throw new Error('log in on the central station first'); }
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}
const BUCKET = {1: 60, 8: 300, 24: 900};
const UNIT_TEXT = {'Cel': '°C', '[degF]': '°F', 'mm[Hg]': 'mmHg', 'cm[H2O]': 'cmH2O', 'ug/kg/min': 'µg/kg/min', '1': ''};
const unitText = u => (u in UNIT_TEXT ? UNIT_TEXT[u] : (u || ''));
let names = new Map();
async function loadBed() {
  const b = await api('/api/beds');
  const me = b.beds.find(x => x.id === bed);
  if (!me) throw new Error(`no bed ${bed}`);
  $('bed-label').textContent = me.label;
  const p = me.patient;
  $('patient').textContent = p ? `${(p.family || '').toUpperCase()}${p.given ? ', ' + p.given : ''} · MRN ${p.id}` : 'no patient admitted';
  names = new Map(me.values.map(v => [v.mdc_code, `${v.display} (${unitText(v.unit)})`]));
  document.title = `${me.label}: bed view`;
}
function chart(series, fromS, toS) {
  const W = 600, H = 120, pad = 4;
  const pts = series.points;
  const lo = Math.min(...pts.map(p => p.min)), hi = Math.max(...pts.map(p => p.max));
  const span = hi - lo || 1;
  const x = t => pad + (W - 2 * pad) * (t - fromS) / Math.max(1, toS - fromS);
  const y = v => H - pad - (H - 2 * pad) * (v - lo) / span;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('class', 'trend');
  svg.setAttribute('role', 'img');
  const band = document.createElementNS(SVG, 'polygon');
  band.setAttribute('points', [...pts.map(p => `${x(p.t)},${y(p.max)}`), ...pts.slice().reverse().map(p => `${x(p.t)},${y(p.min)}`)].join(' '));
  band.setAttribute('class', 'band');
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts.map(p => `${x(p.t)},${y(p.mean)}`).join(' '));
  line.setAttribute('class', 'mean');
  svg.append(band, line);
  return {svg, lo, hi};
}
async function loadTrends(hours) {
  window.icuBedView.hours = hours;
  for (const b of document.querySelectorAll('.range button')) b.setAttribute('aria-pressed', String(Number(b.dataset.hours) === hours));
  const to = new Date(), from = new Date(to.getTime() - hours * 3600e3);
  const base = `/api/beds/${encodeURIComponent(bed)}/trends?from=${from.toISOString()}&to=${to.toISOString()}&bucket_s=${BUCKET[hours]}`;
  const all = new Map();
  let after = null;
  for (let page = 0; page < 20; page++) {
    const r = await api(after ? `${base}&after=${encodeURIComponent(after)}` : base);
    for (const s of r.series) {
      const cur = all.get(s.mdc) || [];
      all.set(s.mdc, cur.concat(s.points));
    }
    after = r.next;
    if (!after) break;
  }
  const box = $('trends');
  box.replaceChildren();
  let points = 0;
  for (const [mdc, pts] of [...all.entries()].sort((a, b) => a[0] - b[0])) {
    if (!pts.length) continue;
    points += pts.length;
    const {svg, lo, hi} = chart({points: pts}, from.getTime() / 1000, to.getTime() / 1000);
    const fig = el('figure', 'trend-box');
    fig.dataset.mdc = mdc;
    const last = pts[pts.length - 1];
    fig.append(el('figcaption', '', `${names.get(mdc) || 'MDC ' + mdc}: now ${last.last}, range ${lo}–${hi}, ${pts.length} points`), svg);
    box.append(fig);
  }
  window.icuBedView.series = box.children.length;
  window.icuBedView.points = points;
  $('trend-note').textContent = points ? `last ${hours} h, ${BUCKET[hours] / 60}-minute buckets (line: mean, band: min to max)` : `no readings in the last ${hours} h`;
}
async function loadHistory() {
  const h = await api(`/api/beds/${encodeURIComponent(bed)}/alarm-history?hours=24`);
  const body = $('alarm-history');
  body.replaceChildren();
  for (const a of h.changes) {
    const tr = el('tr', `prio-${a.priority}`);
    for (const c of [a.time, a.priority, a.text, a.phase, a.state, a.acknowledged_by, a.silenced_by]) tr.append(el('td', '', c || ''));
    // Clicking a row shows the alarm's curves (waves.js).
    Object.assign(tr.dataset, {alarm: a.alarm_id, timeUs: String(a.time_us), phase: a.phase || '', text: a.text || ''});
    tr.title = 'click: the curves around this alarm';
    body.append(tr);
  }
  window.icuBedView.history = h.changes.length;
  const l = await api('/api/limit-changes');
  const lb = $('limit-history');
  lb.replaceChildren();
  for (const c of (Array.isArray(l) ? l : l.changes || []).filter(c => c.bed === bed)) {
    const tr = el('tr');
    const show = v => (v === null || v === undefined ? '' : String(v));
    for (const v of [c.at_us ? new Date(c.at_us / 1000).toISOString() : '', names.get(c.mdc_code) || c.mdc_code, `${show(c.old_low)}–${show(c.old_high)}`, `${show(c.new_low)}–${show(c.new_high)}`, c.who, c.reason]) tr.append(el('td', '', show(v)));
    lb.append(tr);
  }
}
document.addEventListener('click', ev => {
  const b = ev.target.closest('.range button');
  if (b) loadTrends(Number(b.dataset.hours)).catch(e => { $('err').textContent = String(e); });
});
(async () => {
  try {
    await loadBed();
    await Promise.all([loadTrends(1), loadHistory()]);
    window.icuBedView.ready = true;
  } catch (e) { $('err').textContent = String(e); window.icuBedView.error = String(e); }
})();
setInterval(() => {
  loadHistory().catch(() => {});
  loadTrends(window.icuBedView.hours).catch(() => {});
}, 10000);
