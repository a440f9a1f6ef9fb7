/** The event every emitter dispatches: its payload is `detail`, as in a DOM CustomEvent. */
export class PodstreamEvent extends Event {
    /**
     * @param {string} type
     * @param {unknown} detail
     */
    constructor(type: string, detail: unknown);
    /** The event's payload (what `on` handlers receive). */
    detail: unknown;
}
/**
 * @template {Record<string, unknown>} Events
 */
export class Emitter<Events extends Record<string, unknown>> extends EventTarget {
    constructor();
    /** The listener registered for each (event, handler), so `off` can remove it and `on` adds it once. */
    /** @type {Map<string, Map<(payload: any) => void, (event: Event) => void>>} */
    _listeners: Map<string, Map<(payload: any) => void, (event: Event) => void>>;
    /**
     * Call `handler` with the payload of every `event`; returns a function that removes it. Adding the same
     * handler twice for one event adds it once, as `addEventListener` does.
     * @template {keyof Events & string} K
     * @param {K} event
     * @param {(payload: Events[K]) => void} handler
     * @returns {() => void}
     */
    on<K extends keyof Events & string>(event: K, handler: (payload: Events[K]) => void): () => void;
    /**
     * @template {keyof Events & string} K
     * @param {K} event
     * @param {(payload: Events[K]) => void} handler
     * @returns {void}
     */
    off<K extends keyof Events & string>(event: K, handler: (payload: Events[K]) => void): void;
    /**
     * Dispatch `event` with `payload` to its listeners, synchronously, in the order they were added. A listener
     * that throws does not stop the others or the caller: the platform reports the error as uncaught.
     * @template {keyof Events & string} K
     * @param {K} event
     * @param {Events[K]} payload
     * @returns {void}
     */
    emit<K extends keyof Events & string>(event: K, payload: Events[K]): void;
}
