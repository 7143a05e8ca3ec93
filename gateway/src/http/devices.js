// The device console: devices with their link and counters, each device's last messages with
// the ACK sent, and the dead letters (searchable by device and time). Raw HL7 and bytes are only
// ever put into the page as textContent (never HTML), with segment ends shown as line breaks.
const $ = id => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
async function api(url) {
  const r = await fetch(url, {headers: {'x-icu-background': '1'}});
  if (r.status === 401) { location.href = '/'; throw new Error('log in on the central station first'); }
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}
// HL7 as text: segments on their own lines, other control bytes visible as <0xNN>.
function hl7Text(s) {
  return String(s ?? '').replace(/\r\n?|\n/g, '\n').replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g,
    c => `<0x${c.charCodeAt(0).toString(16).padStart(2, '0')}>`);
}
const last = new Map();   // device -> [messages, time] for the msgs/s column
let shown = null;
async function refreshDevices() {
  const d = await api('/api/devices');
  $('gw').textContent = d.gateway_id;
  const body = $('devices');
  body.replaceChildren();
  const now = Date.now();
  for (const x of d.devices) {
    const prev = last.get(x.id);
    const rate = prev ? ((x.messages - prev[0]) * 1000 / Math.max(1, now - prev[1])).toFixed(1) : '';
    last.set(x.id, [x.messages, now]);
    const tr = el('tr');
    tr.dataset.device = x.id;
    const link = `${x.link || ''}${x.link_reason ? ': ' + x.link_reason : ''}${x.link_since ? ' (since ' + x.link_since + ')' : ''}`;
    const cells = [x.id, x.bed, x.protocol, x.identity || '', x.state, link, x.messages, x.observations, x.errors,
      x.duplicates, rate, x.device_clock, x.last_seen || '', x.last_error || ''];
    cells.forEach((c, i) => { const td = el('td', i === 4 ? `state-${x.state}` : '', String(c)); tr.append(td); });
    const td = el('td');
    const b = el('button', 'show-messages', 'Messages');
    b.type = 'button';
    b.dataset.device = x.id;
    td.append(b);
    tr.append(td);
    body.append(tr);
  }
}
async function showMessages(device) {
  shown = device;
  const m = await api(`/api/devices/${encodeURIComponent(device)}/messages`);
  $('messages-box').hidden = false;
  $('messages-device').textContent = device;
  const box = $('messages');
  box.replaceChildren();
  if (!m.messages.length) box.append(el('p', '', 'no message received since the gateway started'));
  const list = [...m.messages];
  if (m.rejected.length) {
    box.append(el('h3', '', `last rejected messages (${m.rejected.length})`));
    list.unshift(...m.rejected.map(x => ({...x, rejected: true})));
  }
  for (const x of list) {
    const item = el('article', x.rejected ? 'exchange rejected' : 'exchange');
    item.dataset.ack = x.ack_code;
    item.append(el('h3', '', `${x.received} · ${x.message_len} bytes · ACK ${x.ack_code || '(none)'}`));
    item.append(el('pre', 'raw', hl7Text(x.message)));
    item.append(el('pre', 'raw ack', hl7Text(x.ack)));
    box.append(item);
  }
}
let before = null;
function localToIso(v) { return v ? new Date(v).toISOString() : ''; }
async function searchDeadLetters(more) {
  if (!more) before = null;
  const q = new URLSearchParams();
  const device = $('dl-device').value.trim();
  if (device) q.set('device', device);
  if ($('dl-from').value) q.set('from', localToIso($('dl-from').value));
  if ($('dl-to').value) q.set('to', localToIso($('dl-to').value));
  if (before) q.set('before', before);
  const r = await api(`/api/dead-letters?${q}`);
  const box = $('dead-letters');
  if (!more) box.replaceChildren();
  if (!more && !r.dead_letters.length) box.append(el('p', '', 'no dead letter matches'));
  for (const x of r.dead_letters) {
    const item = el('article', 'dead-letter');
    item.dataset.id = x.id;
    item.dataset.device = x.device_id || '';
    item.append(el('h3', '', `#${x.id} · ${x.received} · ${x.device_id || 'unattributed'} · ${x.transport} from ${x.peer} · offset ${x.stream_offset}`));
    item.append(el('p', 'reason', `${x.ack_code ? x.ack_code + ' ' : ''}${x.location ? '[' + x.location + '] ' : ''}${x.reason}`));
    item.append(el('pre', 'raw', hl7Text(x.raw_text)));
    const details = el('details');
    details.append(el('summary', '', `raw bytes (${x.raw_len} bytes${x.raw_len > x.raw_base64.length * 3 / 4 ? ', head kept' : ''}), base64`));
    details.append(el('pre', 'raw b64', x.raw_base64));
    item.append(details);
    box.append(item);
  }
  before = r.next_before;
  $('dl-more').hidden = !before;
}
document.addEventListener('click', ev => {
  const b = ev.target.closest('button.show-messages');
  if (b) showMessages(b.dataset.device).catch(e => { $('err').textContent = String(e); });
});
$('dl-form').addEventListener('submit', ev => { ev.preventDefault(); searchDeadLetters(false).catch(e => { $('err').textContent = String(e); }); });
$('dl-more').addEventListener('click', () => searchDeadLetters(true).catch(e => { $('err').textContent = String(e); }));
async function tick() {
  try {
    await refreshDevices();
    if (shown) await showMessages(shown);
    $('err').textContent = '';
  } catch (e) { $('err').textContent = String(e); }
}
tick();
searchDeadLetters(false).catch(e => { $('err').textContent = String(e); });
setInterval(tick, 2000);
