// A WHEP (RFC 9725) viewer that measures glass-to-glass latency from the hybridlive capture
// stamps carried in the H.264 SEI: capture time (UTC, from the stamp) against the moment the
// frame is shown (requestVideoFrameCallback), matched by RTP timestamp.
import { findStamp } from './stamp.js';

function iceGatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, timeoutMs);
  });
}

/**
 * Starts playing `endpoint` (a WHEP URL) in `video`.
 * `onLatency(ms, stamp)` is called for every displayed frame whose stamp was read.
 * `withoutHeaderExtensions`: RTP header extension URIs the offer leaves out (benchmarks compare
 * with and without the playout-delay extension this way).
 * Returns { pc, stop(), stats() }.
 */
export async function playWhep(video, endpoint, { onLatency = () => {}, token, withoutHeaderExtensions = [] } = {}) {
  const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
  const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
  if (withoutHeaderExtensions.length) {
    if (!transceiver.setHeaderExtensionsToNegotiate) throw new Error('this browser cannot decline header extensions');
    transceiver.setHeaderExtensionsToNegotiate(transceiver.getHeaderExtensionsToNegotiate().map(
      (ext) => (withoutHeaderExtensions.includes(ext.uri) ? { ...ext, direction: 'stopped' } : ext)));
  }
  pc.addTransceiver('audio', { direction: 'recvonly' });
  // Interaction: the server echoes every message, so a raised hand also measures the round trip.
  const channel = pc.createDataChannel('interaction');
  const pending = new Map();
  let nextId = 1;
  channel.onmessage = (event) => {
    try {
      const echo = JSON.parse(event.data);
      const waiter = pending.get(echo.id);
      if (waiter) { pending.delete(echo.id); waiter(performance.now() - echo.sentAt); }
    } catch (_) { /* not ours */ }
  };
  const channelOpen = new Promise((resolve) => { channel.onopen = resolve; });
  const captureByRtp = new Map();
  let stampsRead = 0;

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
  })).pipeTo(writable);

  const stream = new MediaStream();
  video.srcObject = stream;
  pc.ontrack = (event) => stream.addTrack(event.track);

  const onFrame = (now, meta) => {
    const stamp = captureByRtp.get(meta.rtpTimestamp);
    if (stamp) {
      const shownMs = performance.timeOrigin + meta.expectedDisplayTime;
      onLatency(shownMs - stamp.captureMs, stamp);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc, 2000);
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  // Join time runs from the offer leaving (ICE gathering is the browser's own business).
  const postedAt = performance.now();
  const response = await fetch(endpoint, { method: 'POST', headers, body: pc.localDescription.sdp });
  if (response.status !== 201) {
    pc.close();
    throw new Error(`WHEP ${response.status}: ${await response.text()}`);
  }
  const resource = new URL(response.headers.get('Location'), new URL(endpoint, location.href));
  await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });

  const roundTrip = async (message) => {
    await channelOpen;
    const id = nextId++;
    const rtt = new Promise((resolve) => pending.set(id, resolve));
    channel.send(JSON.stringify({ ...message, id, sentAt: performance.now() }));
    return rtt;
  };

  return {
    pc,
    /** `performance.now()` when the offer was POSTed. */
    postedAt,
    stampsRead: () => stampsRead,
    /** Reports this viewer's glass-to-glass latency to the server (figures only). */
    async reportLatency(p50Ms, p95Ms) {
      await channelOpen;
      channel.send(JSON.stringify({ type: 'latency', p50_ms: p50Ms, p95_ms: p95Ms }));
    },
    /** Sends a question to the host; resolves to the data-channel round trip in ms. */
    raiseHand(text) {
      return roundTrip({ type: 'hand', text });
    },
    /** Data-channel round trip in ms, without raising a hand (the server echoes it). */
    ping() {
      return roundTrip({ type: 'ping' });
    },
    /** ICE round-trip time of the connection in use, in ms (null before it is measured). */
    async rtt() {
      const report = await pc.getStats();
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
    /** The inbound-rtp statistics of the `kind` ('video' or 'audio') track. */
    async stats(kind = 'video') {
      const report = await pc.getStats();
      for (const s of report.values()) {
        if (s.type === 'inbound-rtp' && s.kind === kind) return s;
      }
      return null;
    },
    async stop() {
      pc.close();
      await fetch(resource, { method: 'DELETE' }).catch(() => {});
    },
  };
}
