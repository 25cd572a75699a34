// cooperative_groups for the host model (tests/cuda_host/mb_host.h): this_grid().sync() is one
// barrier over every thread of a cooperative launch; in any other launch it is reported.
#pragma once
#include "mb_host.h"

namespace cooperative_groups {
struct grid_group {
    void sync() const {
        if (!mbh::grid_barrier) return mbh::fail("grid.sync() in a launch that is not cooperative");
        mbh::grid_barrier->wait();
    }
    unsigned long long size() const {
        return 1ull * gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y * blockDim.z;
    }
    bool is_valid() const { return mbh::grid_barrier != nullptr; }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
