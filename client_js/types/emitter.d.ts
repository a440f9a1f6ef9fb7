/**
 * @template {Record<string, unknown>} Events
 */
export class Emitter<Events extends Record<string, unknown>> {
    /** @type {Map<keyof Events, Set<(payload: any) => void>>} */
    _handlers: Map<keyof Events, Set<(payload: any) => void>>;
    /**
     * Call `handler` on every `event`; returns a function that removes it.
     * @template {keyof Events} K
     * @param {K} event
     * @param {(payload: Events[K]) => void} handler
     * @returns {() => void}
     */
    on<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): () => void;
    /**
     * @template {keyof Events} K
     * @param {K} event
     * @param {(payload: Events[K]) => void} handler
     * @returns {void}
     */
    off<K extends keyof Events>(event: K, handler: (payload: Events[K]) => void): void;
    /**
     * Call the handlers of `event` in the order they were added. A handler that throws does not stop the others
     * or the caller: the error is reported asynchronously (as an uncaught error), like a DOM event listener's.
     * @template {keyof Events} K
     * @param {K} event
     * @param {Events[K]} payload
     * @returns {void}
     */
    emit<K extends keyof Events>(event: K, payload: Events[K]): void;
}
