// @podstream/client: subscribe to podstream relay jobs from a browser or Node.
export { Backoff } from "./backoff.js";
export { PodstreamClient, RelayHttpError } from "./client.js";
export { Emitter, PodstreamEvent } from "./emitter.js";
export { PROBLEMS, PodstreamError, itemRanges, jobEnded, sentence } from "./errors.js";
export { IntegrityError, PodstreamFile, sha256Hex } from "./file.js";
export { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "./frames.js";
export { JobSubscription, isTerminalStatus, substituteFiles } from "./subscription.js";

// The types of options, events and answers, for TypeScript users: `import type {ProgressEvent} from "@podstream/client"`.
/**
 * @typedef {import("./client.js").ClientOptions} ClientOptions
 * @typedef {import("./client.js").ClientEvents} ClientEvents
 * @typedef {import("./client.js").ConnectionState} ConnectionState
 * @typedef {import("./client.js").SubmitResult} SubmitResult
 * @typedef {import("./client.js").SubmitOptions} SubmitOptions
 * @typedef {import("./inputs.js").InputRef} InputRef
 * @typedef {import("./inputs.js").UploadOptions} UploadOptions
 * @typedef {import("./inputs.js").UploadProgress} UploadProgress
 * @typedef {import("./inputs.js").BatchProgress} BatchProgress
 * @typedef {import("./subscription.js").JobEvents} JobEvents
 * @typedef {import("./subscription.js").SubscribedEvent} SubscribedEvent
 * @typedef {import("./subscription.js").StatusEvent} StatusEvent
 * @typedef {import("./subscription.js").ProgressEvent} ProgressEvent
 * @typedef {import("./subscription.js").StepProgress} StepProgress
 * @typedef {import("./subscription.js").ByteProgress} ByteProgress
 * @typedef {import("./subscription.js").ErrorEvent} ErrorEvent
 * @typedef {import("./subscription.js").DoneEvent} DoneEvent
 * @typedef {import("./subscription.js").ItemStart} ItemStart
 * @typedef {import("./subscription.js").ResultEvent} ResultEvent
 * @typedef {import("./subscription.js").Manifest} Manifest
 */
