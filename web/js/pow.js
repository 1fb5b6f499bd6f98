// The waiting room's proof of work (issue 15): an ALTCHA v1 challenge solved in the
// browser. Find n in 0..maxNumber with SHA-256(salt + n) == challenge (hex), hashing with
// crypto.subtle in batches (each digest is a promise: one at a time would spend most of
// the time waiting for the event loop), and answer the payload the server checks:
// base64(JSON {algorithm, challenge, number, salt, signature}).

const BATCH = 1000;

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function same(buf, want) {
  const got = new Uint8Array(buf);
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) return false;
  return true;
}

/** The number that solves `ch` (a challenge as GET .../queue/challenge answers it). */
export async function solve(ch) {
  if (ch.algorithm !== "SHA-256") throw new Error(`unsupported algorithm ${ch.algorithm}`);
  if (!globalThis.crypto || !crypto.subtle) throw new Error("this browser cannot hash (needs https)");
  const want = hexBytes(ch.challenge);
  const enc = new TextEncoder();
  for (let start = 0; start <= ch.maxNumber; start += BATCH) {
    const end = Math.min(start + BATCH, ch.maxNumber + 1);
    const jobs = [];
    for (let n = start; n < end; n++) jobs.push(crypto.subtle.digest("SHA-256", enc.encode(ch.salt + n)));
    const hashes = await Promise.all(jobs);
    for (let i = 0; i < hashes.length; i++) if (same(hashes[i], want)) return start + i;
  }
  throw new Error("the challenge has no solution");
}

/** The payload for `POST .../queue` ({"altcha": payload}). */
export function payload(ch, number) {
  return btoa(JSON.stringify({
    algorithm: ch.algorithm, challenge: ch.challenge, number, salt: ch.salt,
    signature: ch.signature,
  }));
}
