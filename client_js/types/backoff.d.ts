/**
 * @typedef {object} BackoffOptions
 * @property {number} [minDelay] milliseconds, the cap of the first retry (default 500)
 * @property {number} [maxDelay] milliseconds, the cap of any retry (default 20000)
 * @property {() => number} [random] uniform in [0, 1) (default Math.random; tests inject their own)
 */
export class Backoff {
    /** @param {BackoffOptions} [options] */
    constructor(options?: BackoffOptions);
    minDelay: number;
    maxDelay: number;
    random: () => number;
    /** Retries since the last reset. */
    attempt: number;
    /**
     * The cap of the current attempt's delay, before jitter.
     * @returns {number}
     */
    ceiling(): number;
    /**
     * The delay before the next retry, in milliseconds; advances the attempt counter.
     * @returns {number}
     */
    next(): number;
    /** Back to the first attempt (after a connection that worked). */
    reset(): void;
}
export type BackoffOptions = {
    /**
     * milliseconds, the cap of the first retry (default 500)
     */
    minDelay?: number | undefined;
    /**
     * milliseconds, the cap of any retry (default 20000)
     */
    maxDelay?: number | undefined;
    /**
     * uniform in [0, 1) (default Math.random; tests inject their own)
     */
    random?: (() => number) | undefined;
};
