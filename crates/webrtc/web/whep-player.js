// A WHEP (RFC 9725) viewer that measures glass-to-glass latency from the hybridlive capture
// stamps carried in the H.264 SEI: capture time (UTC, from the stamp) against the moment the
// frame is shown (requestVideoFrameCallback), matched by RTP timestamp.
//
// A connection that is lost (the network, a server restart) is noticed from the peer
// connection's state and offered again with back-off, on a new session.
import { findStamp } from './stamp.js';

/** How long a `disconnected` connection may take to come back by itself before it is lost. */
const DISCONNECTED_GRACE_MS = 2000;
/** How long received media may stop, once it flowed, before the connection counts as lost:
 * browsers take 5 s or more to call a silent peer `disconnected`. */
const SILENCE_MS = 3000;
/** Back-off between offers after a loss: doubles from the first to the last, then stays. */
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 8000;

function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, timeoutMs);
  });
}

/** How long an offer made with STUN/TURN servers waits for its candidates before it is sent
 * with those it has. Their candidates need not be in the offer (WHEP here has no trickle ICE,
 * but the browser checks from every candidate it gathers later, and the server learns the
 * address as peer-reflexive from the check), while a TURN server that never answers would
 * hold the offer until the 2 s cap: a viewer with UDP must not wait for it. */
const SERVER_CANDIDATES_MS = 250;

/** How long the OPTIONS asking for the ICE servers may take before the offer goes without
 * them (a viewer whose UDP works does not need them). */
const ICE_SERVERS_TIMEOUT_MS = 1500;

/**
 * The ICE servers in a `Link` header (RFC 9725 section 4.4: `<turn:...>; rel="ice-server";
 * username="..."; credential="..."`; several, comma-separated, as a browser joins repeated
 * headers), as RTCPeerConnection's `iceServers`. A TURN server without a credential is left
 * out: RTCPeerConnection refuses it (InvalidAccessError).
 */
export function parseIceServerLinks(header) {
  if (!header) return [];
  const servers = [];
  // Link values are separated by commas outside <...> and "..." (URLs and params hold none of
  // those the server sends, but other servers may quote them).
  const values = [];
  let current = '';
  let inUrl = false;
  let inQuote = false;
  for (const c of header) {
    if (c === '<' && !inQuote) inUrl = true;
    else if (c === '>' && !inQuote) inUrl = false;
    else if (c === '"' && !inUrl) inQuote = !inQuote;
    if (c === ',' && !inUrl && !inQuote) { values.push(current); current = ''; } else current += c;
  }
  values.push(current);
  for (const value of values) {
    const url = value.match(/^\s*<([^>]*)>/);
    if (!url) continue;
    const params = {};
    for (const m of value.slice(url[0].length).matchAll(/;\s*([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^;\s]*))/g)) {
      params[m[1].toLowerCase()] = m[2] !== undefined ? m[2] : m[3];
    }
    if (!(params.rel || '').split(/\s+/).includes('ice-server')) continue;
    const server = { urls: url[1] };
    if (/^turns?:/i.test(url[1])) {
      if (params.username === undefined || params.credential === undefined) continue;
      server.username = params.username;
      server.credential = params.credential;
    } else if (!/^stuns?:/i.test(url[1])) {
      continue;
    }
    servers.push(server);
  }
  return servers;
}

/**
 * Asks the WHEP endpoint for its ICE servers (OPTIONS, as RFC 9725 allows before an offer):
 * `[]` when it names none, does not answer in time or fails. Never throws.
 */
export async function fetchIceServers(endpoint, token) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ICE_SERVERS_TIMEOUT_MS);
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(endpoint, { method: 'OPTIONS', headers, signal: abort.signal });
    return parseIceServerLinks(response.headers.get('Link'));
  } catch (_) {
    return [];
  } finally {
    clearTimeout(timer);
  }
}

/**
 * How a viewer reads `transport`: what carries the media ('WebRTC' over UDP, 'WebRTC over
 * TCP' when the network let no UDP through, 'WebRTC via a TURN relay (tcp)'...).
 */
export function transportLabel(transport) {
  if (!transport) return 'WebRTC';
  if (transport.candidateType === 'relay') {
    return `WebRTC via a TURN relay${transport.relayProtocol ? ` (${transport.relayProtocol})` : ''}`;
  }
  return transport.protocol === 'tcp' ? 'WebRTC over TCP' : 'WebRTC';
}

/**
 * Starts playing `endpoint` (a WHEP URL) in `video`.
 * `onLatency(ms, stamp)` is called for every displayed frame whose stamp was read.
 * `onState(state, detail)` is told `'lost'` (with the reason) when the connection is lost and
 * the player starts offering again, `'retrying'` (with the error) when an offer failed and the
 * next one waits `detail.retryInMs`, and `'playing'` when a new session is up again.
 * `withoutHeaderExtensions`: RTP header extension URIs the offer leaves out (benchmarks compare
 * with and without the playout-delay extension this way).
 * `onRung(rung)` is told the quality the server sends, on every change, when it serves a
 * ladder: `{ rung, width, height, bitrate, auto, pin_overridden, rungs: [{ width, height,
 * bitrate }, ...] }` (rung 0 the highest); `setQuality(n)` pins rung `n`, `setQuality(null)`
 * goes back to automatic (kept across reconnections).
 * The first offer failing rejects the returned promise; after that, the player keeps trying
 * until `stop()`.
 * Returns { pc, postedAt, stop(), stats(), ... } (`pc` and `postedAt` are the current
 * session's).
 */
export async function playWhep(video, endpoint, {
  onLatency = () => {}, onState = () => {}, onRung = () => {}, token, withoutHeaderExtensions = [],
} = {}) {
  const captureByRtp = new Map();
  let stampsRead = 0;
  let stopped = false;
  let session = null;
  let retryTimer = null;
  // The viewer's choice of quality (null: automatic) and the last rung the server reported.
  let pinned = null;
  let rung = null;
  const stream = new MediaStream();
  video.srcObject = stream;

  // One loop for the player's life, cancelled by stop(): a loop left running keeps the closed
  // peer connection (and everything it references) alive.
  let frameCallback = null;
  const onFrame = (now, meta) => {
    frameCallback = null;
    if (stopped) return;
    const stamp = captureByRtp.get(meta.rtpTimestamp);
    if (stamp) {
      const shownMs = performance.timeOrigin + meta.expectedDisplayTime;
      onLatency(shownMs - stamp.captureMs, stamp);
    }
    frameCallback = video.requestVideoFrameCallback(onFrame);
  };
  frameCallback = video.requestVideoFrameCallback(onFrame);

  /** One WHEP session: a peer connection, its offer and answer, its data channel. */
  async function connect() {
    // Asked while the peer connection and its offer are made: it costs a good network no
    // wait. The servers join the candidates gathered at setLocalDescription; ICE tries every
    // pair at once by priority (UDP host/srflx, then TCP, then relay last), so a viewer with
    // UDP still connects over UDP, and one with only TCP to the relay gets through it.
    const iceServers = fetchIceServers(endpoint, token);
    const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
    const current = {
      pc, resource: null, postedAt: null, channel: null, channelOpen: null, pending: new Map(), nextId: 1,
      graceTimer: null, watchdog: null,
    };
    try {
      const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
      if (withoutHeaderExtensions.length) {
        if (!transceiver.setHeaderExtensionsToNegotiate) throw new Error('this browser cannot decline header extensions');
        transceiver.setHeaderExtensionsToNegotiate(transceiver.getHeaderExtensionsToNegotiate().map(
          (ext) => (withoutHeaderExtensions.includes(ext.uri) ? { ...ext, direction: 'stopped' } : ext)));
      }
      pc.addTransceiver('audio', { direction: 'recvonly' });
      // Interaction: the server echoes every message, so a raised hand also measures the round trip.
      const channel = current.channel = pc.createDataChannel('interaction');
      channel.onmessage = (event) => {
        try {
          const echo = JSON.parse(event.data);
          if (echo.type === 'rung') {
            if (current === session) { rung = echo; onRung(echo); }
            return;
          }
          const waiter = current.pending.get(echo.id);
          if (waiter) { current.pending.delete(echo.id); waiter(performance.now() - echo.sentAt); }
        } catch (_) { /* not ours */ }
      };
      current.channelOpen = new Promise((resolve) => { channel.onopen = resolve; });
      // A new session after a loss keeps the quality the viewer chose.
      current.channelOpen.then(() => {
        if (pinned !== null) channel.send(JSON.stringify({ type: 'quality', rung: pinned }));
      });

      // Read the SEI of each received frame without altering it.
      const { readable, writable } = transceiver.receiver.createEncodedStreams();
      readable.pipeThrough(new TransformStream({
        transform(frame, controller) {
          const stamp = findStamp(new Uint8Array(frame.data));
          if (stamp) {
            stampsRead++;
            captureByRtp.set(frame.timestamp, stamp);
            if (captureByRtp.size > 300) captureByRtp.delete(captureByRtp.keys().next().value);
          }
          controller.enqueue(frame);
        },
      })).pipeTo(writable).catch(() => { /* the connection closed */ });

      pc.ontrack = (event) => {
        // The new session's tracks replace the lost one's: the picture resumes in place.
        for (const old of stream.getTracks().filter((t) => t.kind === event.track.kind)) stream.removeTrack(old);
        stream.addTrack(event.track);
      };

      const offer = await pc.createOffer();
      const servers = await iceServers;
      if (servers.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers });
      await pc.setLocalDescription(offer);
      await iceGatheringDone(pc, servers.length ? SERVER_CANDIDATES_MS : 2000);
      const headers = { 'Content-Type': 'application/sdp' };
      if (token) headers.Authorization = `Bearer ${token}`;
      // Join time runs from the offer leaving (ICE gathering is the browser's own business).
      current.postedAt = performance.now();
      const response = await fetch(endpoint, { method: 'POST', headers, body: pc.localDescription.sdp });
      if (response.status !== 201) throw new Error(`WHEP ${response.status}: ${await response.text()}`);
      current.resource = new URL(response.headers.get('Location'), new URL(endpoint, location.href));
      await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    } catch (err) {
      pc.close();
      throw err;
    }
    // Media that stopped after it flowed (the server went away without a word) is a loss too.
    let packets = 0;
    let quietSince = null;
    current.watchdog = setInterval(async () => {
      if (current !== session) return;
      let received = 0;
      for (const s of (await pc.getStats()).values()) {
        if (s.type === 'inbound-rtp') received += s.packetsReceived || 0;
      }
      if (received > packets || packets === 0) {
        packets = received;
        quietSince = null;
      } else if (quietSince === null) {
        quietSince = performance.now();
      } else if (performance.now() - quietSince >= SILENCE_MS) {
        lost(`no media for ${Math.round(SILENCE_MS / 1000)} s`);
      }
    }, 500);
    pc.addEventListener('connectionstatechange', () => {
      if (current !== session) return;
      const state = pc.connectionState;
      clearTimeout(current.graceTimer);
      if (state === 'failed' || state === 'closed') {
        lost(`connection ${state}`);
      } else if (state === 'disconnected') {
        // Often back within a second (a lost burst, a network change); if not, start over.
        current.graceTimer = setTimeout(() => lost('connection disconnected'), DISCONNECTED_GRACE_MS);
      }
    });
    return current;
  }

  function close(current) {
    clearTimeout(current.graceTimer);
    clearInterval(current.watchdog);
    current.pc.close();
    if (current.resource) fetch(current.resource, { method: 'DELETE' }).catch(() => {});
  }

  function lost(reason) {
    if (stopped || !session) return;
    close(session);
    session = null;
    captureByRtp.clear();
    onState('lost', { reason });
    retry(RETRY_FIRST_MS);
  }

  function retry(delayMs) {
    retryTimer = setTimeout(async () => {
      retryTimer = null;
      if (stopped) return;
      try {
        const current = await connect();
        if (stopped) { close(current); return; }
        session = current;
        onState('playing', {});
      } catch (err) {
        if (stopped) return;
        const next = Math.min(delayMs * 2, RETRY_MAX_MS);
        onState('retrying', { error: String(err.message || err), retryInMs: next });
        retry(next);
      }
    }, delayMs);
  }

  try {
    session = await connect();
  } catch (err) {
    stopped = true;
    if (frameCallback !== null) video.cancelVideoFrameCallback(frameCallback);
    throw err;
  }

  const roundTrip = async (message) => {
    const current = session;
    if (!current) throw new Error('not connected');
    await current.channelOpen;
    const id = current.nextId++;
    const rtt = new Promise((resolve) => current.pending.set(id, resolve));
    current.channel.send(JSON.stringify({ ...message, id, sentAt: performance.now() }));
    return rtt;
  };

  return {
    /** The current session's peer connection (null while reconnecting). */
    get pc() { return session ? session.pc : null; },
    /** `performance.now()` when the current session's offer was POSTed. */
    get postedAt() { return session ? session.postedAt : null; },
    /** Whether a session is up (false while reconnecting and after stop()). */
    get connected() { return session !== null; },
    stampsRead: () => stampsRead,
    /** Reports this viewer's glass-to-glass latency to the server (figures only). */
    async reportLatency(p50Ms, p95Ms) {
      const current = session;
      if (!current) return;
      await current.channelOpen;
      current.channel.send(JSON.stringify({ type: 'latency', p50_ms: p50Ms, p95_ms: p95Ms }));
    },
    /** Sends a question to the host; resolves to the data-channel round trip in ms. */
    raiseHand(text) {
      return roundTrip({ type: 'hand', text });
    },
    /** The quality the server last reported (see `onRung`), null before it did or without a ladder. */
    get rung() { return rung; },
    /** Pins rung `n` (0 the highest), or `null` for automatic; the server answers with a rung report. */
    async setQuality(n) {
      pinned = Number.isInteger(n) && n >= 0 ? n : null;
      const current = session;
      if (!current) return;
      await current.channelOpen;
      current.channel.send(JSON.stringify({ type: 'quality', rung: pinned }));
    },
    /** Data-channel round trip in ms, without raising a hand (the server echoes it). */
    ping() {
      return roundTrip({ type: 'ping' });
    },
    /** ICE round-trip time of the connection in use, in ms (null before it is measured). */
    async rtt() {
      if (!session) return null;
      const report = await session.pc.getStats();
      for (const s of report.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = report.get(s.selectedCandidatePairId);
          if (pair && pair.currentRoundTripTime !== undefined) return pair.currentRoundTripTime * 1000;
        }
      }
      for (const s of report.values()) {
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
          return s.currentRoundTripTime * 1000;
        }
      }
      return null;
    },
    /**
     * What carries the current session, from the selected ICE candidate pair: `{ protocol,
     * candidateType, relayProtocol, remoteProtocol }` of this side's candidate ('udp' or 'tcp';
     * 'host', 'srflx', 'prflx' or 'relay'; the relay's protocol to its TURN server) and the
     * server's; null before a pair is selected. One offer carries every candidate kind: ICE
     * tries UDP and TCP at once and keeps the best pair that works, UDP when it can.
     */
    async transport() {
      if (!session) return null;
      const report = await session.pc.getStats();
      let pair = null;
      for (const s of report.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      }
      if (!pair) {
        for (const s of report.values()) {
          if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
        }
      }
      const local = pair && report.get(pair.localCandidateId);
      const remote = pair && report.get(pair.remoteCandidateId);
      if (!local) return null;
      return {
        protocol: local.protocol,
        candidateType: local.candidateType,
        relayProtocol: local.relayProtocol || null,
        remoteProtocol: remote ? remote.protocol : null,
      };
    },
    /** The inbound-rtp statistics of the `kind` ('video' or 'audio') track of the current session. */
    async stats(kind = 'video') {
      if (!session) return null;
      const report = await session.pc.getStats();
      for (const s of report.values()) {
        if (s.type === 'inbound-rtp' && s.kind === kind) return s;
      }
      return null;
    },
    async stop() {
      stopped = true;
      clearTimeout(retryTimer);
      if (frameCallback !== null) video.cancelVideoFrameCallback(frameCallback);
      frameCallback = null;
      const current = session;
      session = null;
      if (current) {
        clearTimeout(current.graceTimer);
        clearInterval(current.watchdog);
        current.pc.close();
        if (current.resource) await fetch(current.resource, { method: 'DELETE' }).catch(() => {});
      }
    },
  };
}
