// @podstream/client: subscribe to podstream relay jobs from a browser or Node.
export { Backoff } from "./backoff.js";
export { PodstreamClient, RelayHttpError } from "./client.js";
export { Emitter } from "./emitter.js";
export { IntegrityError, PodstreamFile, sha256Hex } from "./file.js";
export { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "./frames.js";
export { JobSubscription, isTerminalStatus } from "./subscription.js";
