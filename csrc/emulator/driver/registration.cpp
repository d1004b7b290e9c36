// The op schemas, registered as torch.ops.adapttoken_emu.* (this library is built with
// -Dadapttoken=adapttoken_emu so it can load beside the real extension).
#include "../../registration.cpp"
