python -m microbench explain lstm --device cpu --frameworks torch,mxnet -H 512 -B 64 -T 100
