// One translation unit per (layer, header) pair of tests/layering/CMakeLists.txt: it is compiled
// with exactly the include path of the layer's target and includes the one header named by
// SN_PROBE_HEADER. A "never" pair must fail with "No such file"; an allowed pair must compile.
#include SN_PROBE_HEADER

int sn_layering_probe(void) { return 0; }
