// Reconnect delays: exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
// Jitter"): the n-th retry waits a uniformly random time in [0, min(maxDelay, minDelay * 2^n)], so that many
// clients dropped at once by a relay restart do not come back in lockstep.

/**
 * @typedef {object} BackoffOptions
 * @property {number} [minDelay] milliseconds, the cap of the first retry (default 500)
 * @property {number} [maxDelay] milliseconds, the cap of any retry (default 20000)
 * @property {() => number} [random] uniform in [0, 1) (default Math.random; tests inject their own)
 */

export class Backoff {
  /** @param {BackoffOptions} [options] */
  constructor(options = {}) {
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 20000;
    if (!(this.minDelay > 0) || !(this.maxDelay >= this.minDelay)) {
      throw new RangeError(`backoff needs 0 < minDelay <= maxDelay, got ${this.minDelay}, ${this.maxDelay}`);
    }
    this.random = options.random ?? Math.random;
    /** Retries since the last reset. */
    this.attempt = 0;
  }

  /**
   * The cap of the current attempt's delay, before jitter.
   * @returns {number}
   */
  ceiling() {
    // 2^attempt overflows to Infinity for large attempts; Math.min handles that.
    return Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
  }

  /**
   * The delay before the next retry, in milliseconds; advances the attempt counter.
   * @returns {number}
   */
  next() {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }

  /** Back to the first attempt (after a connection that worked). */
  reset() {
    this.attempt = 0;
  }
}
