"""A batch image -> video RunPod handler, written the common way: each input image
becomes a short zooming MP4 clip, returned base64-encoded with its id. 100 clips are tens of MB of JSON,
over RunPod's 20 MB cap on a job's result: "Failed to return job results | 413 Payload Too Large" (or 400),
and every clip is lost. See examples/README.md: original.py is the handler as it was, handler.py the
same with `podstream.wrap` (two lines changed).
"""

import base64
import io

import av
import numpy as np
import runpod
from PIL import Image


def image_to_video(image_id, image_base64, frames, fps, size):
    """A zoom into the picture (a "Ken Burns" clip), encoded as H.264 in memory."""
    picture = Image.open(io.BytesIO(base64.b64decode(image_base64))).convert("RGB")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for k in range(frames):
            inset = k * picture.width // (4 * frames)
            box = (inset, inset, picture.width - inset, picture.height - inset)
            frame = np.asarray(picture.resize((size, size), box=box))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video_data = base64.b64encode(buffer.getvalue()).decode("utf-8")
    return {"id": image_id, "video_base64": video_data}


def images_to_videos(images, frames, fps, size):
    return [image_to_video(image["id"], image["image_base64"], frames, fps, size) for image in images]


def handler(job):
    job_input = job["input"]
    images = job_input["images"]
    frames = int(job_input.get("frames", 8))
    fps = int(job_input.get("fps", 8))
    size = int(job_input.get("size", 96))
    videos = images_to_videos(images, frames, fps, size)
    return {"videos": videos, "count": len(videos)}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
