"""Local stand-in for TensorFlow Serving (LOCAL STAND-IN ONLY; production runs the tensorflow/serving image).

`python -m devplatform.modelserver` loads TensorFlow quietly, then runs `server.main`; the server, its
version policies and its error reporting are described in `server.py`.
"""
