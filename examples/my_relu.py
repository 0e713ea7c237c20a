"""The tutorials' custom activation: MyReLU, max(0, x), as a Keras layer; and the same as a function.

studies/custom-activation.yaml names them `examples/my_relu.py:MyReLU` and
`examples/my_relu.py:my_relu`; relative paths are read from the working directory, so run sweep
from the repository root.

The tutorials write `def __init__(self): super().__init__()`. Keras 3 passes name=, trainable=
and dtype= to the constructor when it loads a saved model, so __init__ takes **kwargs and hands
them on: without that the model saves but never loads (sweep refuses such a class up front).
No `register_keras_serializable` is needed: sweep registers what it imports (see
sweep/models/custom.py), and each model it logs carries this file and a loader that registers it
again (sweep/tracking/model_code.py): `mlflow.pyfunc.load_model(uri)` and `mlflow models serve`
load it in any folder, without sweep.
"""

import keras


class MyReLU(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, x):
        return keras.ops.maximum(0.0, x)


def my_relu(x):
    return keras.ops.maximum(0.0, x)
