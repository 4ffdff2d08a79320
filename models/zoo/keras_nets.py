"""The four MLPerf Tiny (v1.x) reference models as the MLCommons `tiny` repository's
training scripts build them in Keras (benchmark/training/*/keras_model.py), written
here from their published layer lists, with random (seeded) weights.  Run by
models/zoo/build.py inside the TensorFlow environment (see its docstring); exported
with tf2onnx, so the ONNX graphs are NHWC with Transposes and TF 'same' padding.

* ic_resnet8: image classification, CIFAR-10 32x32x3: Conv 16 3x3 + BN + ReLU; three
  residual stacks (16 s1, 32 s2, 64 s2) of [Conv 3x3 + BN + ReLU, Conv 3x3 + BN] with an
  identity shortcut in the first and a 1x1 stride-2 Conv shortcut in the others, Add, ReLU;
  AveragePooling2D over the whole 8x8 map, Flatten, Dense 10 + softmax.
* vww_mobilenet_v1_025: visual wake words, 96x96x3, MobileNetV1 alpha 0.25: Conv 8 3x3 s2
  + BN + ReLU, then 13 depthwise-separable blocks (DepthwiseConv 3x3 + BN + ReLU, Conv 1x1 +
  BN + ReLU) with filters 16, 32 s2, 32, 64 s2, 64, 128 s2, 128 x5, 256 s2, 256;
  AveragePooling2D over the 3x3 map, Flatten, Dense 2 + softmax.
* kws_ds_cnn: keyword spotting, 49x10x1 MFCC: Conv 64 10x4 s2 'same' + BN + ReLU + Dropout
  0.2, four [DepthwiseConv 3x3 + BN + ReLU, Conv 64 1x1 + BN + ReLU], Dropout 0.4,
  AveragePooling2D 25x5, Flatten, Dense 12 + softmax.
* ad_fc_autoencoder: anomaly detection (ToyADMOS), 640 inputs (5 frames x 128 mel bins):
  Dense 128 + BN + ReLU x4, Dense 8 + BN + ReLU (bottleneck), Dense 128 + BN + ReLU x4,
  Dense 640 (linear reconstruction).
"""
import numpy as np


def _keras():
    import keras
    return keras, keras.layers


def ic_resnet8():
    keras, L = _keras()
    inp = keras.Input((32, 32, 3), name="input")
    reg = keras.regularizers.l2(1e-4)

    def conv(x, f, k, s):
        return L.Conv2D(f, k, strides=s, padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)(x)

    x = L.Activation("relu")(L.BatchNormalization()(conv(inp, 16, 3, 1)))
    for f, s in ((16, 1), (32, 2), (64, 2)):
        y = L.Activation("relu")(L.BatchNormalization()(conv(x, f, 3, s)))
        y = L.BatchNormalization()(conv(y, f, 3, 1))
        if s != 1:
            x = conv(x, f, 1, s)
        x = L.Activation("relu")(L.Add()([x, y]))
    x = L.AveragePooling2D(pool_size=int(min(x.shape[1:3])))(x)
    x = L.Flatten()(x)
    out = L.Dense(10, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inp, out, name="ic_resnet8"), (1, 32, 32, 3)


def vww_mobilenet_v1_025():
    keras, L = _keras()
    inp = keras.Input((96, 96, 3), name="input")
    a = 0.25

    def bn_relu(x):
        return L.Activation("relu")(L.BatchNormalization()(x))

    x = bn_relu(L.Conv2D(int(32 * a), 3, strides=2, padding="same", kernel_initializer="he_normal")(inp))
    for f, s in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                 (512, 1), (512, 1), (1024, 2), (1024, 1)):
        x = bn_relu(L.DepthwiseConv2D(3, strides=s, padding="same", depthwise_initializer="he_normal")(x))
        x = bn_relu(L.Conv2D(int(f * a), 1, padding="same", kernel_initializer="he_normal")(x))
    x = L.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    x = L.Flatten()(x)
    out = L.Dense(2, activation="softmax")(x)
    return keras.Model(inp, out, name="vww_mobilenet_v1_025"), (1, 96, 96, 3)


def kws_ds_cnn():
    keras, L = _keras()
    inp = keras.Input((49, 10, 1), name="input")
    reg = keras.regularizers.l2(1e-4)
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg)(inp)
    x = L.Dropout(0.2)(L.Activation("relu")(L.BatchNormalization()(x)))
    for _ in range(4):
        x = L.DepthwiseConv2D((3, 3), padding="same", depthwise_regularizer=reg)(x)
        x = L.Activation("relu")(L.BatchNormalization()(x))
        x = L.Conv2D(64, (1, 1), padding="same", kernel_regularizer=reg)(x)
        x = L.Activation("relu")(L.BatchNormalization()(x))
    x = L.Dropout(0.4)(x)
    x = L.AveragePooling2D(pool_size=(25, 5))(x)
    x = L.Flatten()(x)
    out = L.Dense(12, activation="softmax")(x)
    return keras.Model(inp, out, name="kws_ds_cnn"), (1, 49, 10, 1)


def ad_fc_autoencoder():
    keras, L = _keras()
    inp = keras.Input((640,), name="input")
    x = inp
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = L.Activation("relu")(L.BatchNormalization()(L.Dense(units)(x)))
    out = L.Dense(640)(x)
    return keras.Model(inp, out, name="ad_fc_autoencoder"), (1, 640)


NETS = {"mlperf_ic_resnet8": ic_resnet8, "mlperf_vww_mbv1_025": vww_mobilenet_v1_025,
        "mlperf_kws_ds_cnn": kws_ds_cnn, "mlperf_ad_fc_ae": ad_fc_autoencoder}


def randomize_bn(model, seed):
    """Give every BatchNormalization non-trivial statistics (a freshly built Keras model has
    mean 0 / var 1, which would make BN an identity and hide folding mistakes)."""
    rng = np.random.default_rng(seed)
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape).astype("float32"),
                               rng.normal(0, 0.1, b.shape).astype("float32"),
                               rng.normal(0, 0.1, m.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, v.shape).astype("float32")])
