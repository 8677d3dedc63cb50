"""Run in a process of its own by test_model_serving.py: load each SavedModel the way TensorFlow
Serving's C++ loader does (tensorflow/cc/saved_model/loader.cc: the "serve" MetaGraph imported into
a session, its saver's restore op run on variables/variables, then its main op), run the
serving_default signature on the given inputs and write the outputs. No Python object of the
exporting code is used, as none is in the server.

argv: inputs.npz outputs.npz MODEL_DIR... ; inputs.npz keys are "<model>/<input name>".
"""

import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

MAIN_OP_KEYS = ("saved_model_main_op", "legacy_init_op")


def load_as_served(session: tf.compat.v1.Session, model_dir: Path) -> tf.compat.v1.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel.FromString((model_dir / "saved_model.pb").read_bytes())
    (meta,) = [m for m in saved_model.meta_graphs if set(m.meta_info_def.tags) == {"serve"}]
    tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    variables = model_dir / "variables" / "variables"
    if meta.HasField("saver_def") and (model_dir / "variables" / "variables.index").exists():
        session.run(meta.saver_def.restore_op_name, {meta.saver_def.filename_tensor_name: str(variables)})
    for key in MAIN_OP_KEYS:
        if key in meta.collection_def:
            session.run(meta.collection_def[key].node_list.value[0])
            break
    return meta


def main() -> int:
    inputs, outputs_path, model_dirs = np.load(sys.argv[1]), sys.argv[2], [Path(arg) for arg in sys.argv[3:]]
    outputs: dict[str, Any] = {}  # Any: numpy's stubs type savez's keywords as its allow_pickle too
    for model_dir in model_dirs:
        name = model_dir.parent.name
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            signature = load_as_served(session, model_dir).signature_def["serving_default"]
            feeds = {info.name: inputs[f"{name}/{key}"] for key, info in signature.inputs.items()}
            fetches = {key: info.name for key, info in signature.outputs.items()}
            for key, value in session.run(fetches, feeds).items():
                outputs[f"{name}/{key}"] = value
    np.savez(outputs_path, **outputs)
    print(tf.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
