// The central station: a tile per bed, an alarm bar across the top, alarm sounds, and NO DATA
// the moment the gateway stops answering. Everything is served by the gateway (no CDN).
//
// - Updates change only what changed: each tile, numeric and alarm item is built once and then
//   updated in place (text, classes, `hidden`), so a button stays the same element while a
//   nurse reaches for it.
// - Loss of data is an alarm: a request that fails or takes longer than REQUEST_TIMEOUT_MS, or
//   an event stream that errors, blanks every tile to NO DATA and raises the page's own
//   technical alarm; values come back only from a fresh, complete reload.
// - A bed whose newest reading is older than STALE_MS (by the gateway's clock) is NO DATA too.
// - Sound (Web Audio, generated here): high priority a 10-pulse burst every 5 s, medium 3 pulses
//   every 7 s, low 2 pulses every 15 s, for alarms nobody acknowledged or silenced. A browser
//   that blocks audio until a click gets a banner asking for that click; audio paused by a
//   nurse shows its countdown. `window.icuStation` and `#audio[data-state]` report the state.

const REQUEST_TIMEOUT_MS = 2500;
const POLL_MS = 1000;
const STALE_MS = 10000;
const PRIORITY_RANK = {PH: 3, PM: 2, PL: 1};
const UNIT_TEXT = {'Cel': '°C', '[degF]': '°F', 'mm[Hg]': 'mmHg', 'cm[H2O]': 'cmH2O', 'ug/kg/min': 'µg/kg/min',
  'mL/cm[H2O]': 'mL/cmH2O', 'cm[H2O]/L/s': 'cmH2O/L/s', '1': '', '/min': '/min'};
// Display order of the numerics: heart rate, SpO2, blood pressures, respiration, temperature.
const ORDER = ['MDC_ECG_HEART_RATE', 'MDC_PULS_RATE', 'MDC_PULS_OXIM_PULS_RATE', 'MDC_PULS_OXIM_SAT_O2',
  'MDC_PRESS_CUFF', 'MDC_PRESS_BLD_NONINV', 'MDC_PRESS_BLD_ART_ABP', 'MDC_PRESS_BLD_ART', 'MDC_PRESS_BLD',
  'MDC_RESP_RATE', 'MDC_TTHOR_RESP_RATE', 'MDC_CO2_RESP_RATE', 'MDC_AWAY_CO2_ET', 'MDC_TEMP_BODY', 'MDC_TEMP_CORE', 'MDC_TEMP'];
const BP_NAME = {MDC_PRESS_CUFF: 'NIBP', MDC_PRESS_BLD_NONINV: 'NIBP', MDC_PRESS_BLD_ART_ABP: 'ABP',
  MDC_PRESS_BLD_ART: 'ART', MDC_PRESS_BLD: 'BP'};

window.icuStation = {link: 'connecting', audio: 'off', tones: 0, lastTone: null, noDataBeds: []};
const $ = id => document.getElementById(id);
const esc = s => String(s ?? '').replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
const setText = (e, t) => { if (e.textContent !== t) e.textContent = t; };
const unitText = u => (u in UNIT_TEXT ? UNIT_TEXT[u] : (u || ''));

// --- who is logged in -------------------------------------------------------------------
// Every API call carries the session cookie. Background refreshes say so (x-icu-background), so
// a page left open locks after the idle logoff like any other; a click or key press here is the
// person's activity and is reported at most every 20 s.
class AuthNeeded extends Error {}
async function api(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
  try {
    const r = await fetch(url, {headers: {'x-icu-background': '1'}, signal: ctl.signal});
    if (r.status === 401) { await authNeeded(r); throw new AuthNeeded(); }
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return await r.json();
  } finally { clearTimeout(timer); }
}
async function authNeeded(r) {
  let body = {};
  try { body = await r.json(); } catch (_) {}
  if (body.locked) { $('unlock-account').textContent = body.account || ''; show('unlock'); } else { show('login'); }
}
function show(which) {
  $('login').hidden = which !== 'login';
  $('unlock').hidden = which !== 'unlock';
  if (which === 'login') $('login-account').focus();
  if (which === 'unlock') $('unlock-pin').focus();
}
async function post(url, body) {
  return fetch(url, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
}
async function whoami() {
  const r = await fetch('/api/session');
  if (r.status === 401) { await authNeeded(r); return null; }
  if (!r.ok) return null;
  const me = await r.json();
  $('who').innerHTML = `${esc(me.account)} (${esc(me.role)}) <button id="logout">Log off</button>` +
    (me.may && !me.may.change_limits && me.role !== 'physician' ? ` <button id="breakglass">Emergency access</button>` : '');
  const g = $('glass');
  g.hidden = !me.break_glass;
  if (me.break_glass) g.textContent = `EMERGENCY ACCESS until ${new Date(me.break_glass.until_us / 1000).toLocaleTimeString()}`;
  show(null);
  return me;
}
$('login-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const r = await post('/api/login', {account: $('login-account').value, password: $('login-password').value});
  $('login-password').value = '';
  if (!r.ok) {
    let m = 'login refused';
    try { m = (await r.json()).message || m; } catch (_) {}
    $('login-msg').textContent = m;
    return;
  }
  $('login-msg').textContent = '';
  await start();
});
$('unlock-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const r = await post('/api/unlock', {pin: $('unlock-pin').value});
  $('unlock-pin').value = '';
  if (!r.ok) {
    let b = {};
    try { b = await r.json(); } catch (_) {}
    if (!b.locked) { show('login'); return; }
    $('unlock-msg').textContent = `wrong PIN (${b.tries_left} tries left)`;
    return;
  }
  $('unlock-msg').textContent = '';
  await start();
});
$('unlock-other').addEventListener('click', async () => { await post('/api/logout', {}); show('login'); });
document.addEventListener('click', async ev => {
  if (ev.target.id === 'logout') {
    await post('/api/logout', {});
    if (events) { events.close(); events = null; }
    show('login');
  } else if (ev.target.id === 'breakglass') {
    const reason = prompt('Emergency access gives you the physician\'s clinical permissions for 15 minutes and is recorded in the audit trail. Reason:');
    if (!reason) return;
    const r = await post('/api/break-glass', {reason, minutes: 15});
    $('err').textContent = r.ok ? '' : await r.text();
    whoami();
  }
});
let lastTouch = 0;
for (const kind of ['click', 'keydown']) {
  document.addEventListener(kind, () => {
    const now = Date.now();
    if (now - lastTouch > 20000 && $('login').hidden && $('unlock').hidden) { lastTouch = now; fetch('/api/session'); }
  });
}

// --- the link to the gateway ------------------------------------------------------------
function setLink(ok, why) {
  const state = ok ? 'ok' : 'lost';
  window.icuStation.link = state;
  document.body.dataset.link = state;
  const l = $('link');
  l.className = state;
  setText(l, ok ? 'live' : `NO DATA: ${why}`);
  $('nodata-banner').hidden = ok;
  if (!ok) for (const t of tiles.values()) { t.root.classList.add('no-data'); setText(t.nodata, 'NO DATA'); }
  updateSound();
}

// --- tiles ------------------------------------------------------------------------------
const tiles = new Map();   // bed id -> {root, label, patient, mrn, status, nums, nodata, rows: Map}
function tileFor(bed) {
  let t = tiles.get(bed.id);
  if (t) return t;
  const root = el('article', 'bed');
  root.dataset.bed = bed.id;
  root.setAttribute('aria-label', bed.label);
  const head = el('header');
  const label = el('a', 'label', bed.label);
  label.href = `/beds/${encodeURIComponent(bed.id)}`;
  label.title = 'trends, alarm and limit history';
  const who = el('span');
  const patient = el('span', 'patient');
  const mrn = el('span', 'mrn');
  who.append(patient, ' ', mrn);
  head.append(label, who);
  const status = el('div', 'status');
  const nums = el('div', 'nums');
  const nodata = el('div', 'nodata', 'NO DATA');
  root.append(head, status, nodata, nums);
  $('beds').append(root);
  t = {root, label, patient, mrn, status, nums, nodata, rows: new Map(), keys: ''};
  tiles.set(bed.id, t);
  return t;
}
function family(refid) {
  const m = /^(.*)_(SYS|DIA|MEAN)$/.exec(refid || '');
  return m && BP_NAME[m[1]] ? [m[1], m[2]] : null;
}
function rank(key) { const i = ORDER.indexOf(key); return i < 0 ? ORDER.length : i; }
// The numerics of a bed: blood pressure parts grouped (132/81 (98)), others one each.
function numerics(bed) {
  const groups = new Map();
  for (const v of bed.values) {
    const f = family(v.refid);
    const key = f ? f[0] : (v.refid || String(v.mdc_code));
    let g = groups.get(key);
    if (!g) { g = {key, label: f ? BP_NAME[f[0]] : (v.display || v.refid), parts: {}, codes: [], newest: 0}; groups.set(key, g); }
    g.parts[f ? f[1] : 'ONE'] = v;
    g.codes.push(v.mdc_code);
    g.newest = Math.max(g.newest, v.receive_time_us || 0);
  }
  return [...groups.values()].sort((a, b) => rank(a.key) - rank(b.key) || a.label.localeCompare(b.label));
}
function valueText(v) {
  if (!v) return '-';
  if (v.value === null || v.value === undefined) return v.value_text ? v.value_text : '---';
  return Number.isInteger(v.value) ? String(v.value) : v.value.toFixed(1);
}
function limitsText(codes, bed) {
  const l = (bed.limits || []).find(x => codes.includes(x.mdc_code));
  const off = (bed.limits_off || []).find(x => codes.includes(x.mdc_code));
  if (off) return {text: `${off.sides} limit OFF`, cls: 'off', title: `${off.reason} (${off.who})`};
  if (!l) return {text: '', cls: ''};
  const lo = l.low ?? '', hi = l.high ?? '';
  return {text: `${lo}–${hi}${l.changed ? ' ✎' : ''}`, cls: l.changed ? 'changed' : '',
    title: l.changed ? `changed from the default ${l.default_low ?? ''}–${l.default_high ?? ''}` : 'default limits'};
}
function updateTile(bed, devices, nowUs, alarmCodes) {
  const t = tileFor(bed);
  setText(t.label, bed.label);
  const p = bed.patient;
  setText(t.patient, p ? `${(p.family || '').toUpperCase()}${p.given ? ', ' + p.given : ''}` || p.id : 'no patient admitted');
  setText(t.mrn, p ? `MRN ${p.id}` : '');
  // Device link and clock.
  const mine = devices.filter(d => d.bed === bed.id);
  const parts = mine.map(d => {
    const bad = d.state !== 'online';
    const clock = d.device_clock === 'unsynced' ? ' · clock unsynced' : '';
    return `<span class="${bad || clock ? 'bad' : ''}">${esc(d.id)} ${esc(d.state)}${clock}</span>`;
  });
  const html = parts.join(' · ');
  if (t.status.innerHTML !== html) t.status.innerHTML = html;
  // NO DATA: no reading for STALE_MS by the gateway's clock.
  const groups = numerics(bed);
  const newest = Math.max(0, ...groups.map(g => g.newest));
  const noData = !newest || nowUs - newest > STALE_MS * 1000;
  t.root.classList.toggle('no-data', noData);
  setText(t.nodata, noData ? (newest ? 'NO DATA' : 'NO DATA (no reading yet)') : '');
  // Rows: rebuilt only when the set of parameters changes; values updated in place.
  const keys = groups.map(g => g.key).join('|');
  if (keys !== t.keys) {
    t.keys = keys;
    t.nums.replaceChildren();
    t.rows.clear();
    for (const g of groups) {
      const label = el('span', 'num-label');
      const name = el('span');
      const lim = el('span', 'lim');
      label.append(name, lim);
      const value = el('span', 'num-value');
      const text = el('span');
      const unit = el('span', 'u');
      value.append(text, unit);
      value.dataset.key = g.key;
      if (!g.parts.ONE) value.classList.add('bp');
      value.dataset.code = String(g.codes[0]);
      t.nums.append(label, value);
      t.rows.set(g.key, {name, lim, value, text, unit});
    }
  }
  for (const g of groups) {
    const r = t.rows.get(g.key);
    setText(r.name, g.label);
    let text, unit;
    if (g.parts.ONE) { text = valueText(g.parts.ONE); unit = unitText(g.parts.ONE.unit); } else {
      text = `${valueText(g.parts.SYS)}/${valueText(g.parts.DIA)}${g.parts.MEAN ? ` (${valueText(g.parts.MEAN)})` : ''}`;
      unit = unitText((g.parts.SYS || g.parts.DIA || g.parts.MEAN).unit);
    }
    setText(r.text, noData ? '' : text);
    setText(r.unit, noData ? '' : unit);
    const lim = limitsText(g.codes, bed);
    setText(r.lim, lim.text);
    r.lim.className = `lim ${lim.cls}`;
    r.lim.title = lim.title || '';
    const pr = g.codes.map(c => alarmCodes.get(`${bed.id}|${c}`)).filter(Boolean).sort((a, b) => PRIORITY_RANK[b] - PRIORITY_RANK[a])[0];
    r.value.classList.toggle('in-alarm', !!pr);
  }
  // The tile's alarm colour and flash: the highest alarm nobody has responded to flashes.
  const open = (bed.alarms || []).filter(a => (a.state || 'active') !== 'inactive');
  const top = open.sort((a, b) => PRIORITY_RANK[b.priority] - PRIORITY_RANK[a.priority])[0];
  const sounding = open.filter(isSounding).sort((a, b) => PRIORITY_RANK[b.priority] - PRIORITY_RANK[a.priority])[0];
  for (const c of ['PH', 'PM', 'PL']) t.root.classList.toggle(c, !!top && top.priority === c);
  t.root.classList.toggle('flash-high', !!sounding && sounding.priority === 'PH');
  t.root.classList.toggle('flash-medium', !!sounding && sounding.priority === 'PM');
  t.root.dataset.alarm = top ? top.priority : '';
  return noData;
}

// --- the alarm bar ----------------------------------------------------------------------
const items = new Map();  // alarm id -> {root, where, what, tag, state, ack, silence}
function isTechnical(a) { return a.alert_type === 'ST' || String(a.source || a.condition || '').startsWith('gateway:'); }
function isSounding(a) {
  const s = a.state || 'active';
  return s === 'active' || s === 'latched' || (!a.engine && s !== 'acknowledged');
}
function itemFor(a) {
  let it = items.get(a.alarm_id);
  if (it) return it;
  const root = el('div', 'alarm');
  root.dataset.alarm = a.alarm_id;
  const where = el('span', 'where');
  const what = el('span', 'what');
  const tag = el('span', 'tag', 'TECH');
  const state = el('small');
  const ack = el('button', 'ack', 'Acknowledge');
  ack.type = 'button';
  const silence = el('button', 'silence', 'Silence 2 min');
  silence.type = 'button';
  root.append(where, tag, what, state, ack, silence);
  it = {root, where, what, tag, state, ack, silence};
  items.set(a.alarm_id, it);
  return it;
}
function countdown(untilUs, nowUs) {
  const s = Math.max(0, Math.round((untilUs - nowUs) / 1e6));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
function updateAlarmBar(list, nowUs) {
  const bar = $('alarmbar');
  const seen = new Set();
  list.sort((a, b) => (PRIORITY_RANK[b.priority] || 0) - (PRIORITY_RANK[a.priority] || 0) || (b.since_us || 0) - (a.since_us || 0));
  let prev = null;
  for (const a of list) {
    seen.add(a.alarm_id);
    const it = itemFor(a);
    const state = a.state || 'active';
    it.root.className = `alarm ${a.priority}${isTechnical(a) ? ' tech' : ''}`;
    if (isSounding(a) && a.priority === 'PH') it.root.classList.add('flash-high');
    if (isSounding(a) && a.priority === 'PM') it.root.classList.add('flash-medium');
    it.root.dataset.state = state;
    it.root.dataset.bed = a.bed;
    it.root.dataset.priority = a.priority;
    setText(it.where, a.where);
    setText(it.what, a.text);
    it.tag.hidden = !isTechnical(a);
    const silenced = state === 'silenced' && a.silenced_until_us ? ` ${countdown(a.silenced_until_us, nowUs)}` : '';
    const by = a.acknowledged_by ? ` by ${a.acknowledged_by}` : (a.silenced_by ? ` by ${a.silenced_by}` : '');
    setText(it.state, `${state}${silenced}${by}`);
    it.ack.hidden = !a.engine || state === 'acknowledged';
    it.silence.hidden = !a.engine || state === 'silenced' || state === 'acknowledged';
    it.ack.dataset.bed = it.silence.dataset.bed = a.bed;
    it.ack.dataset.id = it.silence.dataset.id = a.alarm_id;
    // Order without re-creating: move only what is out of place.
    const want = prev ? prev.nextSibling : bar.firstChild;
    if (want !== it.root) bar.insertBefore(it.root, want);
    prev = it.root;
  }
  for (const [id, it] of items) if (!seen.has(id)) { it.root.remove(); items.delete(id); }
}

// --- sound ------------------------------------------------------------------------------
const PATTERNS = {PH: {hz: 880, pulses: [0, .15, .3, .6, .75, 1.2, 1.35, 1.5, 1.8, 1.95], every: 5000},
  PM: {hz: 660, pulses: [0, .25, .5], every: 7000}, PL: {hz: 440, pulses: [0, .3], every: 15000}};
let audio = null, pausedUntil = 0, nextTone = 0, toneLevel = null, soundLevel = null;
function audioState() {
  if (!audio) return 'off';
  if (audio.state !== 'running') return 'blocked';
  return Date.now() < pausedUntil ? 'paused' : 'on';
}
function showAudio() {
  const s = audioState();
  window.icuStation.audio = s;
  document.body.dataset.audio = s;
  const a = $('audio');
  a.dataset.state = s;
  setText(a, s === 'paused' ? `AUDIO PAUSED ${countdown(pausedUntil * 1000, Date.now() * 1000)}` :
    s === 'blocked' ? 'AUDIO BLOCKED' : `audio: ${s}`);
  $('audio-banner').hidden = s !== 'blocked';
  const b = $('audio-pause');
  b.hidden = s === 'blocked' || s === 'off';
  setText(b, s === 'paused' ? 'Resume audio' : 'Pause audio 2 min');
}
function startAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  if (!audio) audio = new Ctx();
  if (audio.state !== 'running') audio.resume().catch(() => {}).finally(showAudio);
  audio.onstatechange = showAudio;
  showAudio();
}
$('audio-enable').addEventListener('click', () => { startAudio(); });
$('audio-pause').addEventListener('click', () => {
  pausedUntil = Date.now() < pausedUntil ? 0 : Date.now() + 120000;
  showAudio();
});
function tone(level) {
  const p = PATTERNS[level];
  const t0 = audio.currentTime + 0.02;
  for (const at of p.pulses) {
    const osc = audio.createOscillator(), gain = audio.createGain();
    osc.type = 'square';
    osc.frequency.value = p.hz;
    gain.gain.setValueAtTime(0, t0 + at);
    gain.gain.linearRampToValueAtTime(0.15, t0 + at + 0.01);
    gain.gain.setValueAtTime(0.15, t0 + at + 0.1);
    gain.gain.linearRampToValueAtTime(0, t0 + at + 0.12);
    osc.connect(gain).connect(audio.destination);
    osc.start(t0 + at);
    osc.stop(t0 + at + 0.13);
  }
  window.icuStation.tones += 1;
  window.icuStation.lastTone = {priority: level, at: Date.now()};
}
function updateSound(level) {
  if (level !== undefined) soundLevel = level;
  // The page's own technical alarm: the gateway does not answer.
  const want = window.icuStation.link === 'lost' ? 'PM' : soundLevel;
  window.icuStation.sounding = want;
  if (want !== toneLevel) { toneLevel = want; nextTone = 0; }
}
setInterval(() => {
  showAudio();
  if (!toneLevel || audioState() !== 'on' || Date.now() < nextTone) return;
  tone(toneLevel);
  nextTone = Date.now() + PATTERNS[toneLevel].every;
}, 250);

// --- refresh ----------------------------------------------------------------------------
async function refresh() {
  let b, d, s, al;
  try {
    [b, d, s, al] = await Promise.all(['/api/beds', '/api/devices', '/api/status', '/api/alarms'].map(u => api(u)));
  } catch (e) {
    if (e instanceof AuthNeeded) return;
    setLink(false, e.name === 'AbortError' ? 'the gateway does not answer' : 'the gateway is not reachable');
    return;
  }
  $('err').textContent = '';
  setText($('gw'), b.gateway_id);
  const nowUs = Date.parse(b.generated_at) * 1000 || Date.now() * 1000;
  const labels = new Map(b.beds.map(bed => [bed.id, bed]));
  // Alarms: the beds' (engine and device technical alarms), then the gateway's own.
  const all = [];
  for (const bed of b.beds) {
    const p = bed.patient;
    const where = `${bed.label}${p ? ' · ' + (p.family || p.id) : ''}`;
    for (const a of bed.alarms || []) all.push({...a, bed: a.bed || bed.id, where, since_us: a.since_us ?? (Date.parse(a.since) * 1000 || 0)});
  }
  for (const a of al.active || []) if (!labels.has(a.bed)) all.push({...a, where: a.bed});
  const alarmCodes = new Map();
  for (const a of all) {
    if ((a.state || 'active') === 'inactive' || !a.mdc_code) continue;
    const key = `${a.bed}|${a.mdc_code}`;
    const cur = alarmCodes.get(key);
    if (!cur || PRIORITY_RANK[a.priority] > PRIORITY_RANK[cur]) alarmCodes.set(key, a.priority);
  }
  const noData = [];
  for (const bed of b.beds) if (updateTile(bed, d.devices, nowUs, alarmCodes)) noData.push(bed.id);
  for (const [id, t] of tiles) if (!labels.has(id)) { t.root.remove(); tiles.delete(id); }
  window.icuStation.noDataBeds = noData;
  updateAlarmBar(all, nowUs);
  const sounding = all.filter(isSounding).sort((x, y) => PRIORITY_RANK[y.priority] - PRIORITY_RANK[x.priority])[0];
  // Values are current again only now, after a complete reload.
  setLink(true);
  updateSound(sounding ? sounding.priority : null);
  $('devices').innerHTML = d.devices.map(x => `
    <tr><td>${esc(x.id)}</td><td>${esc(x.bed)}</td><td>${esc(x.protocol)}</td><td class="state-${esc(x.state)}">${esc(x.state)}</td>
    <td>${x.messages}</td><td>${x.observations}</td><td>${x.errors}</td><td class="clock-${esc(x.device_clock)}">${esc(x.device_clock)}${x.device_clock_offset_s != null && x.device_clock !== 'ok' ? ' (' + x.device_clock_offset_s + ' s)' : ''}</td><td>${esc(x.last_seen ?? '')}</td><td>${esc(x.last_error ?? '')}</td></tr>`).join('');
  const bb = s.backbone || {}; const be = $('backbone');
  const buffered = (s.store && s.store.unsent !== undefined) ? `, ${s.store.unsent} buffered` : '';
  setText(be, `backbone: ${bb.state}${bb.reason ? ' (' + bb.reason + ')' : ''}${buffered}`);
  be.className = bb.state === 'online' ? 'online' : 'offline';
}
document.addEventListener('click', async ev => {
  const b = ev.target.closest('button.ack, button.silence');
  if (!b) return;
  const action = b.classList.contains('ack') ? 'ack' : 'silence';
  const r = await fetch(`/api/alarms/${encodeURIComponent(b.dataset.bed)}/${encodeURIComponent(b.dataset.id)}/${action}`,
    {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({seconds: 120})});
  if (r.status === 401) { await authNeeded(r); return; }
  // A refused action (e.g. the silence cap) says why.
  $('err').textContent = r.ok ? '' : await r.text();
  refreshSoon();
});
// At most one refresh in flight; events arriving meanwhile fold into one more refresh, so a
// burst of alarm changes never floods the gateway with requests.
let busy = false, again = false;
async function refreshSoon() {
  if (busy) { again = true; return; }
  busy = true;
  try { await refresh(); } finally {
    busy = false;
    if (again) { again = false; refreshSoon(); }
  }
}
// Alarm state changes arrive as server-sent events: refresh at once (the poll is the clock).
let events = null;
function openEvents() {
  if (!window.EventSource || events) return;
  events = new EventSource('/api/events');
  events.addEventListener('alarm', refreshSoon);
  events.onerror = () => {
    // The stream dropped: nothing shown is current until a full reload succeeds.
    setLink(false, 'the event stream dropped');
    events.close();
    events = null;
    setTimeout(openEvents, 1000);
  };
}
let poll = null;
async function start() {
  const me = await whoami();
  if (!me) return;
  startAudio();
  openEvents();
  refreshSoon();
  if (!poll) poll = setInterval(refreshSoon, POLL_MS);
}
setInterval(() => setText($('clock'), new Date().toLocaleTimeString()), 1000);
start();
