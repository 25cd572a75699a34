"""What TensorFlow's CPU conv kernels run on this machine, asked of TensorFlow itself (once per
test session, in a process of its own): which of them refuse dilation, groups, or groups with a
fused bias depends on the build and the CPU (its oneDNN custom ops, on by default on some x86
CPUs, run all of them).  The adapter must skip exactly what TensorFlow refuses here."""
import functools
import os
import subprocess
import sys

SCRIPT = """
import os
os.environ.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
import tensorflow as tf
# as the adapter runs them: in a tf.function (a graph, where TensorFlow's graph passes choose the
# kernels), with explicit padding
for dil, groups in ((2, 1), (1, 2)):
    x, dy = tf.ones([1, 6, 6, 4]), tf.ones([1, 6 - 2 * dil + 2, 6 - 2 * dil + 2, 4])
    kw = dict(strides=[1, 1, 1, 1], padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1, 1, 1, 0, 0],
              dilations=[1, dil, dil, 1], data_format="NHWC")
    fs = [3, 3, 4 // groups, 4]
    kind = "dilation" if dil > 1 else "groups"
    data = tf.function(lambda dy, w: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.constant([1, 6, 6, 4]), filter=w, out_backprop=dy, **kw))
    weights = tf.function(lambda dy, x: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.constant(fs), out_backprop=dy, **kw))
    for name, call in (("bwd_data", lambda: data(dy, tf.ones(fs))), ("bwd_weights", lambda: weights(dy, x))):
        try:
            call()
            print(name, kind, "ran")
        except tf.errors.OpError as e:
            print(name, kind, "refused")
# the forward: grappler fuses Conv2D + BiasAdd in a tf.function
fwd = tf.function(lambda x, w, b: tf.nn.bias_add(tf.nn.conv2d(x, w, strides=1, padding="VALID"), b))
for kind, fs in (("groups+bias", [3, 3, 2, 4]), ("plain+bias", [3, 3, 4, 4])):
    try:
        fwd(tf.ones([1, 6, 6, 4]), tf.ones(fs), tf.ones([4]))
        print("fwd", kind, "ran")
    except tf.errors.OpError as e:
        print("fwd", kind, "refused")
"""


def tensorflow_runs() -> dict:
    """{(phase, feature): True when TensorFlow ran it here}, phases fwd/bwd_data/bwd_weights, under
    this process's TF_ENABLE_ONEDNN_OPTS (which the framework workers inherit)."""
    return _ask(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))


@functools.lru_cache(maxsize=None)
def _ask(onednn_opts) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    said = {}
    for line in out.stdout.split("\n"):
        parts = line.split()
        if len(parts) == 3:
            said[(parts[0], parts[1])] = parts[2] == "ran"
    assert len(said) == 6, out.stdout
    return said
