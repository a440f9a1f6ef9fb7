// What the demo page says about a job's progress: one line of text and the overall bar, from the counts of its
// cards. Pure (no DOM), so every state is unit-tested (test/demo_progress.test.js) besides the Chromium test.

/**
 * @typedef {object} JobCounts
 * @property {number | null} total  the items the job asks for (the relay's `expected_items`, or what this page
 *   submitted); null while unknown (a job attached from elsewhere, before `done`)
 * @property {number} shown     cards on the page (the highest item index seen + 1 at least)
 * @property {number} ready     items received and verified
 * @property {number} failed    items the job reported as failed
 * @property {number} partial   the sum of the in-flight items' progress (each 0..1)
 * @property {number} bytes     bytes received (live), or the size of the files shown (a replay)
 * @property {boolean} finished the job's `done` arrived: nothing more will come
 * @property {boolean} replay   a finished job shown from its manifest (no live stream)
 *
 * @typedef {"live" | "unknown" | "done" | "stopped"} BarState  `unknown`: running, total not known (an
 *   indeterminate bar); `stopped`: over with items never delivered (cancelled, failed, timed out)
 * @typedef {{text: string, percent: number | null, state: BarState, total: number | null,
 *   undelivered: number}} JobProgress
 */

/** @param {number} bytes */
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * @param {JobCounts} c
 * @returns {JobProgress}  `percent` is null for an indeterminate bar
 */
export function jobProgress(c) {
  // More items than announced (a model making several per input) count as they come; once the job is over,
  // what was shown is all there is when nobody said how many to expect.
  const total = c.total === null ? (c.finished ? c.shown : null) : Math.max(c.total, c.shown);
  const settled = c.ready + c.failed;
  const undelivered = c.finished && total !== null ? Math.max(0, total - settled) : 0;
  const parts = [total === null ? `${c.ready} ready so far` : `${c.ready} of ${total} ready`];
  if (c.failed) parts.push(`${c.failed} failed`);
  if (undelivered) parts.push(`${undelivered} not delivered`);
  parts.push(c.replay ? formatBytes(c.bytes) : `${formatBytes(c.bytes)} received`);
  /** @type {BarState} */
  let state;
  let percent = null;
  if (total === null) {
    state = "unknown";
  } else if (c.finished) {
    state = undelivered ? "stopped" : "done";
    percent = total ? Math.floor((100 * settled) / total) : 100;
  } else {
    state = "live";
    // each in-flight item counts for its share; never full before `done`
    percent = total ? Math.min(99, Math.floor((100 * (settled + c.partial)) / total)) : 0;
  }
  return { text: parts.join(" · "), percent, state, total, undelivered };
}
