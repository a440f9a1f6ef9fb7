export { Backoff } from "./backoff.js";
export { Emitter } from "./emitter.js";
export { PodstreamClient, RelayHttpError } from "./client.js";
export { IntegrityError, PodstreamFile, sha256Hex } from "./file.js";
export { CloseCode, FrameError, decodeFrame, encodeFrame, isTerminalClose } from "./frames.js";
export { JobSubscription, isTerminalStatus } from "./subscription.js";
