python -m microbench explain lstm --device cpu --frameworks torch,tensorflow,mxnet -T 10 -B 4 -H 32 -C 16 --size 14 --save-logs tests/fixtures/onednn
