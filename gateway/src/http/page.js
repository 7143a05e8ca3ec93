// --- who is logged in -------------------------------------------------------------------
// Every API call carries the session cookie. Background refreshes say so (x-icu-background), so
// a page left open locks after the idle logoff like any other; a click or key press here is the
// person's activity and is reported at most every 20 s.
class AuthNeeded extends Error {}
async function api(url) {
  const r = await fetch(url, {headers: {'x-icu-background': '1'}});
  if (r.status === 401) { await authNeeded(r); throw new AuthNeeded(); }
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}
async function authNeeded(r) {
  let body = {};
  try { body = await r.json(); } catch (_) {}
  if (body.locked) {
    document.getElementById('unlock-account').textContent = body.account || '';
    show('unlock');
  } else {
    show('login');
  }
}
function show(which) {
  document.getElementById('login').hidden = which !== 'login';
  document.getElementById('unlock').hidden = which !== 'unlock';
  if (which === 'login') document.getElementById('login-account').focus();
  if (which === 'unlock') document.getElementById('unlock-pin').focus();
}
async function post(url, body) {
  return fetch(url, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
}
async function whoami() {
  const r = await fetch('/api/session');
  if (r.status === 401) { await authNeeded(r); return null; }
  if (!r.ok) return null;
  const me = await r.json();
  const who = document.getElementById('who');
  who.innerHTML = `${esc(me.account)} (${esc(me.role)}) <button id="logout">Log off</button>` +
    (me.may && !me.may.change_limits && me.role !== 'physician' ? ` <button id="breakglass">Emergency access</button>` : '');
  const g = document.getElementById('glass');
  g.hidden = !me.break_glass;
  if (me.break_glass) g.textContent = `EMERGENCY ACCESS until ${new Date(me.break_glass.until_us / 1000).toLocaleTimeString()}`;
  show(null);
  return me;
}
document.getElementById('login-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const r = await post('/api/login', {
    account: document.getElementById('login-account').value,
    password: document.getElementById('login-password').value,
  });
  document.getElementById('login-password').value = '';
  if (!r.ok) {
    let m = 'login refused';
    try { m = (await r.json()).message || m; } catch (_) {}
    document.getElementById('login-msg').textContent = m;
    return;
  }
  document.getElementById('login-msg').textContent = '';
  await start();
});
document.getElementById('unlock-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const r = await post('/api/unlock', {pin: document.getElementById('unlock-pin').value});
  document.getElementById('unlock-pin').value = '';
  if (!r.ok) {
    let b = {};
    try { b = await r.json(); } catch (_) {}
    if (!b.locked) { show('login'); return; }
    document.getElementById('unlock-msg').textContent = `wrong PIN (${b.tries_left} tries left)`;
    return;
  }
  document.getElementById('unlock-msg').textContent = '';
  await start();
});
document.getElementById('unlock-other').addEventListener('click', async () => {
  await post('/api/logout', {});
  show('login');
});
document.addEventListener('click', async ev => {
  if (ev.target.id === 'logout') {
    await post('/api/logout', {});
    if (events) { events.close(); events = null; }
    document.getElementById('beds').innerHTML = '';
    document.getElementById('devices').innerHTML = '';
    document.getElementById('gwalarms').innerHTML = '';
    show('login');
  } else if (ev.target.id === 'breakglass') {
    const reason = prompt('Emergency access gives you the physician\'s clinical permissions for 15 minutes and is recorded in the audit trail. Reason:');
    if (!reason) return;
    const r = await post('/api/break-glass', {reason, minutes: 15});
    document.getElementById('err').textContent = r.ok ? '' : await r.text();
    whoami();
  }
});
let lastTouch = 0;
for (const kind of ['click', 'keydown']) {
  document.addEventListener(kind, () => {
    const now = Date.now();
    if (now - lastTouch > 20000 && document.getElementById('login').hidden && document.getElementById('unlock').hidden) {
      lastTouch = now;
      fetch('/api/session');
    }
  });
}
let poll = null;
async function start() {
  const me = await whoami();
  if (!me) return;
  openEvents();
  refreshSoon();
  if (!poll) poll = setInterval(refreshSoon, 1000);
}
const esc = s => String(s ?? '').replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
function fmt(v) {
  if (v.value === null || v.value === undefined) return v.value_text ? esc(v.value_text) : '<span class="na">---</span>';
  return Number.isInteger(v.value) ? v.value : v.value.toFixed(1);
}
async function refresh() {
  try {
    const [b, d, s, al] = await Promise.all(['/api/beds', '/api/devices', '/api/status', '/api/alarms'].map(u => api(u)));
    document.getElementById('err').textContent = '';
    document.getElementById('gw').textContent = b.gateway_id;
    const now = Date.now();
    // Alarms of the gateway itself (e.g. its store's disk budget) belong to no bed card.
    const beds = new Set(b.beds.map(bed => bed.id));
    const gw = (al.active || []).filter(a => !beds.has(a.bed));
    document.getElementById('gwalarms').innerHTML = gw.map(a => `<div class="alarm ${esc(a.priority)}" data-alarm="${esc(a.alarm_id)}" data-state="${esc(a.state)}">${esc(a.bed)}: ${esc(a.text)}
      <small>${esc(a.state)}</small> ${a.state !== 'acknowledged' ? `<button class="ack" data-bed="${esc(a.bed)}" data-id="${esc(a.alarm_id)}">Acknowledge</button>` : ''}</div>`).join('');
    document.getElementById('beds').innerHTML = b.beds.map(bed => `
      <div class="bed" data-bed="${esc(bed.id)}"><h2>${esc(bed.label)} <small>${esc(bed.devices.join(', '))}</small></h2>
      ${(bed.alarms || []).map(a => `<div class="alarm ${esc(a.priority)}" data-alarm="${esc(a.alarm_id)}" data-state="${esc(a.state || 'active')}">${esc(a.text)}
        ${a.engine ? `<small>${esc(a.state)}</small> ${a.state !== 'acknowledged' ? `<button class="ack" data-bed="${esc(bed.id)}" data-id="${esc(a.alarm_id)}">Acknowledge</button>` : ''} <button class="silence" data-bed="${esc(bed.id)}" data-id="${esc(a.alarm_id)}">Silence 2 min</button>` : ''}</div>`).join('')}
      ${(bed.limits_off || []).map(l => `<div class="limitoff" data-code="${l.mdc_code}">${esc(l.label)} ${esc(l.sides)} limit OFF: ${esc(l.reason)} <small>(${esc(l.who)})</small></div>`).join('')}
      <div class="vals">${bed.values.map(v => `
        <span class="${now - v.receive_time_us / 1000 > 30000 ? 'stale' : ''}">${esc(v.display)}</span>
        <span class="v" data-code="${v.mdc_code}">${fmt(v)}<span class="u">${esc(v.unit)}</span></span>`).join('')}
      </div></div>`).join('');
    document.getElementById('devices').innerHTML = d.devices.map(x => `
      <tr><td>${esc(x.id)}</td><td>${esc(x.bed)}</td><td>${esc(x.protocol)}</td><td class="state-${esc(x.state)}">${esc(x.state)}</td>
      <td>${x.messages}</td><td>${x.observations}</td><td>${x.errors}</td><td class="clock-${esc(x.device_clock)}">${esc(x.device_clock)}${x.device_clock_offset_s != null && x.device_clock !== 'ok' ? ' (' + x.device_clock_offset_s + ' s)' : ''}</td><td>${esc(x.last_seen ?? '')}</td><td>${esc(x.last_error ?? '')}</td></tr>`).join('');
    const bb = s.backbone || {}; const el = document.getElementById('backbone');
    const buffered = (s.store && s.store.unsent !== undefined) ? `, ${s.store.unsent} buffered` : '';
    el.textContent = `backbone: ${bb.state}${bb.reason ? ' (' + bb.reason + ')' : ''}${bb.topic ? ' (' + bb.topic + ')' : ''}${buffered}`;
    el.className = bb.state === 'online' ? 'online' : 'offline';
  } catch (e) {
    if (e instanceof AuthNeeded) return;
    document.getElementById('err').textContent = 'gateway not reachable: ' + e;
  }
}
document.addEventListener('click', async ev => {
  const b = ev.target.closest('button.ack, button.silence');
  if (!b) return;
  const action = b.classList.contains('ack') ? 'ack' : 'silence';
  const r = await fetch(`/api/alarms/${encodeURIComponent(b.dataset.bed)}/${encodeURIComponent(b.dataset.id)}/${action}`,
    {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({seconds: 120})});
  if (r.status === 401) { await authNeeded(r); return; }
  // A refused action (e.g. the silence cap) says why.
  document.getElementById('err').textContent = r.ok ? '' : await r.text();
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
// Alarm state changes arrive as server-sent events: refresh at once (the poll is a fallback).
let events = null;
function openEvents() {
  if (!window.EventSource || events) return;
  events = new EventSource('/api/events');
  events.addEventListener('alarm', refreshSoon);
}
start();
