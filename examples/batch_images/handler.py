"""A prompt -> batch-of-images RunPod handler, written the common way: every image is
returned as a base64 PNG in the result. `generate_images` stands in for the diffusers pipeline
(deterministic noise from the prompt and seed, so it runs on a CPU). See examples/README.md: original.py
is the handler as it was, handler.py the same with `podstream.wrap` (two lines changed).
"""

import base64
import hashlib
from io import BytesIO

import numpy as np
import runpod
from PIL import Image

import podstream


def generate_images(prompt, num_images, width, height, seed):
    """Stand-in for `pipe(prompt, num_images_per_prompt=n, ...)`: one noise picture per image."""
    digest = hashlib.sha256(f"{prompt}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_images)
    ]


def handler(job):
    job_input = job["input"]
    prompt = job_input["prompt"]
    num_images = int(job_input.get("num_images", 1))
    width = int(job_input.get("width", 768))
    height = int(job_input.get("height", 768))
    seed = int(job_input.get("seed", 0))

    images = generate_images(prompt, num_images, width, height, seed)

    images_b64 = []
    for image in images:
        buffer = BytesIO()
        image.save(buffer, format="PNG")
        images_b64.append(base64.b64encode(buffer.getvalue()).decode("utf-8"))

    return {"images": images_b64, "count": len(images_b64), "prompt": prompt}


if __name__ == "__main__":
    runpod.serverless.start({"handler": podstream.wrap(handler), "return_aggregate_stream": False})
