"""Inference: from a photo, a folder, a video or a webcam to expressions, without PyTorch.

images (decode) -> faces, blazeface (detect, crop) -> recognizer (the models: onnxrt and
numpyloop, or torchbackend and torchloop; tta; adapt) -> predict, video, demo (the commands).
`from ferlab import Recognizer` is the way in.
"""
