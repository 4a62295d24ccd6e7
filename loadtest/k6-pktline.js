// Git pkt-lines for the k6 load test: request bodies exactly as git 2.39 builds
// them, and strict checks of the answers. Pure functions, no k6 imports, so the
// same module runs under node in CI (tests/e2e/test_loadtest_kit.py), where it
// must produce the very bytes loadtest/protocol.py produces.
//
//   pkt-line     = 4 lower-case hex digits (length, counting themselves) + payload
//   flush-pkt    = "0000"    delim-pkt = "0001"    (v2)
//   error        = a pkt-line whose payload starts with "ERR "
//   fetch answer = section headers; "packfile" then sideband pkt-lines:
//                  band 1 pack data, 2 progress, 3 error; a final flush
//   pack         = "PACK" version count objects... SHA-1 of everything before it

export const FLUSH = '0000';
export const DELIM = '0001';
export const AGENT = 'git/2.39.5';
export const ADVERTISEMENT_TYPE = 'application/x-git-upload-pack-advertisement';
export const RESULT_TYPE = 'application/x-git-upload-pack-result';
const OID = /^[0-9a-f]{40}$/;
const SECTIONS = ['acknowledgments', 'shallow-info', 'wanted-refs', 'packfile-uris', 'packfile'];

function hex4(n) {
  return ('0000' + n.toString(16)).slice(-4);
}

// One pkt-line of ASCII text; `lf` (default true) appends the LF git writes.
export function pktLine(text, lf = true) {
  const payload = lf ? text + '\n' : text;
  if (payload.length === 0 || payload.length > 65516) {
    throw new Error('pkt-line payload must be 1..65516 bytes');
  }
  return hex4(payload.length + 4) + payload;
}

// A v2 ls-refs request, as `git clone` 2.39 sends it (capabilities without LF),
// minus "unborn", which git sends only when the server offers it.
export function lsRefsBody(prefixes = ['HEAD', 'refs/heads/', 'refs/tags/']) {
  return [
    pktLine('command=ls-refs'),
    pktLine('agent=' + AGENT, false),
    pktLine('object-format=sha1', false),
    DELIM,
    pktLine('peel'),
    pktLine('symrefs'),
    ...prefixes.map((p) => pktLine('ref-prefix ' + p)),
    FLUSH,
  ].join('');
}

// A v2 fetch request for a fresh clone of `wants` ("done": no negotiation), as
// `git clone --quiet` 2.39 sends it: command, capabilities and flags without LF.
export function fetchBody(wants, depth = 0) {
  if (!wants.length) throw new Error('a fetch needs at least one want');
  for (const oid of wants) {
    if (!OID.test(oid)) throw new Error('not a sha1 object id: ' + oid);
  }
  const lines = [
    pktLine('command=fetch', false),
    pktLine('agent=' + AGENT, false),
    pktLine('object-format=sha1', false),
    DELIM,
    pktLine('thin-pack', false),
    pktLine('no-progress', false),
    pktLine('ofs-delta', false),
  ];
  if (depth > 0) lines.push(pktLine('deepen ' + depth));
  for (const oid of wants) lines.push(pktLine('want ' + oid));
  lines.push(pktLine('done'), FLUSH);
  return lines.join('');
}

function ascii(bytes, start = 0, end = bytes.length) {
  let s = '';
  for (let i = start; i < end; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

function text(packet) {
  return ascii(packet.payload).replace(/\n$/, '');
}

// Split `bytes` (a Uint8Array) into packets; throws on anything that is not pkt-lines.
export function readPackets(bytes) {
  const out = [];
  let pos = 0;
  while (pos < bytes.length) {
    const head = ascii(bytes, pos, pos + 4);
    if (!/^[0-9a-f]{4}$/.test(head)) throw new Error('bad pkt-line length at ' + pos);
    const size = parseInt(head, 16);
    if (size <= 2) {
      out.push({ kind: ['flush', 'delim', 'end'][size], payload: new Uint8Array(0) });
      pos += 4;
      continue;
    }
    if (size < 5 || pos + size > bytes.length) {
      throw new Error('truncated or invalid pkt-line at ' + pos);
    }
    out.push({ kind: 'data', payload: bytes.subarray(pos + 4, pos + size) });
    pos += size;
  }
  return out;
}

function failOnErr(packet) {
  if (packet.kind === 'data' && ascii(packet.payload, 0, 4) === 'ERR ') {
    throw new Error('git error: ' + text(packet).slice(4, 200));
  }
}

// A v2 info/refs answer (the capability advertisement); returns its capabilities.
export function checkInfoRefs(bytes) {
  const packets = readPackets(bytes);
  packets.forEach(failOnErr);
  if (!packets.length || packets[0].kind !== 'data' || text(packets[0]) !== 'version 2') {
    throw new Error('not a protocol v2 advertisement');
  }
  const last = packets[packets.length - 1];
  if (last.kind !== 'flush') throw new Error('advertisement without its final flush');
  return packets.slice(1, -1).map(text);
}

// A v2 ls-refs answer; returns { refs, tip } where tip is HEAD's oid (or the first ref's).
export function checkLsRefs(bytes) {
  const packets = readPackets(bytes);
  if (!packets.length || packets[packets.length - 1].kind !== 'flush') {
    throw new Error('ls-refs answer without its final flush');
  }
  const refs = {};
  for (const p of packets.slice(0, -1)) {
    failOnErr(p);
    if (p.kind !== 'data') throw new Error(p.kind + ' packet inside an ls-refs answer');
    const [oid, name] = text(p).split(' ');
    if (!name || !(OID.test(oid) || oid === 'unborn')) throw new Error('bad ls-refs line');
    if (oid !== 'unborn') refs[name] = oid;
  }
  const tip = refs.HEAD || Object.values(refs)[0];
  if (!tip) throw new Error('no refs (empty repository?)');
  return { refs, tip };
}

function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += ('0' + b.toString(16)).slice(-2);
  return s;
}

// A v2 fetch answer; `sha1hex(ArrayBuffer) -> hex string` checks the pack's trailer.
// Returns { objects, packBytes, sections }.
export function checkFetch(bytes, sha1hex) {
  const sections = [];
  const chunks = [];
  let size = 0;
  let expectHeader = true;
  let inPack = false;
  let ended = false;
  for (const p of readPackets(bytes)) {
    if (ended) throw new Error('data after the final flush');
    failOnErr(p);
    if (p.kind === 'flush') {
      ended = true;
    } else if (p.kind === 'delim') {
      if (inPack) throw new Error('delim inside the packfile section');
      expectHeader = true;
    } else if (p.kind !== 'data') {
      throw new Error('response-end packet over HTTP');
    } else if (expectHeader) {
      const header = text(p);
      if (!SECTIONS.includes(header)) throw new Error('unknown section ' + header.slice(0, 40));
      sections.push(header);
      expectHeader = false;
      inPack = header === 'packfile';
    } else if (inPack) {
      const band = p.payload[0];
      if (band === 1) {
        chunks.push(p.payload.subarray(1));
        size += p.payload.length - 1;
      } else if (band === 3) {
        throw new Error('sideband error: ' + ascii(p.payload, 1).trim().slice(0, 200));
      } else if (band !== 2) {
        throw new Error('sideband band ' + band);
      }
    }
  }
  if (!ended) throw new Error('fetch answer cut short (no final flush)');
  if (!sections.includes('packfile')) throw new Error('no packfile section');
  const pack = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    pack.set(c, at);
    at += c.length;
  }
  if (size < 32 || ascii(pack, 0, 4) !== 'PACK') throw new Error('no pack data');
  const view = new DataView(pack.buffer);
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) throw new Error('pack version ' + version);
  const digest = sha1hex(pack.slice(0, size - 20).buffer);
  if (digest !== toHex(pack.subarray(size - 20))) {
    throw new Error('pack checksum mismatch (truncated?)');
  }
  return { objects: view.getUint32(8), packBytes: size, sections };
}
