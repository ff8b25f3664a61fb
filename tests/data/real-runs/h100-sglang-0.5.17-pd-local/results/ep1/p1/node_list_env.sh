# node_list_env.sh: node and port plan of one pdbench grid point.
# ep1/p1: 1 prefill group(s), decode on 1 node(s), router and client on local0.
# Source it: . node_list_env.sh
export PREFILL_NODE_LIST=local0
export PREFILL_HEAD_NODE=local0
export DECODE_NODE_LIST=local1
export DECODE_HEAD_NODE=local1
export NODE_LIST=local0,local1
export HEAD_NODE=local0
export PDBENCH_EXPERIMENT=ep1
export PDBENCH_POINT=p1
export PREFILL_GROUPS=1
export PREFILL_1_NODE_LIST=local0
export PREFILL_1_HEAD_NODE=local0
export PREFILL_1_HEAD_ADDR=127.0.0.1
export PREFILL_1_URL=http://127.0.0.1:31000
export PREFILL_1_HTTP_PORTS=31000
export PREFILL_1_DIST_INIT_ADDR=127.0.0.1:31090
export PREFILL_1_BOOTSTRAP_PORT=31091
export DECODE_HEAD_ADDR=127.0.0.1
export DECODE_URL=http://127.0.0.1:31900
export DECODE_HTTP_PORTS=31900
export DECODE_DIST_INIT_ADDR=127.0.0.1:31990
export DECODE_BOOTSTRAP_PORT=31991
export ROUTER_NODE=local0
export ROUTER_URL=http://127.0.0.1:32000
export ROUTER_PORT=32000
export CLIENT_NODE=local0
