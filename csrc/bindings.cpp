// Python bindings of the C++ data helpers (module megatron_solo._csrc).
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "packing.h"
#include "tar_index.h"

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Hand a std::vector to numpy without a copy: the array owns the moved vector through a capsule.
py::array_t<int64_t> to_numpy(std::vector<int64_t>&& v) {
  auto* owned = new std::vector<int64_t>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<int64_t>*>(p); });
  return py::array_t<int64_t>({static_cast<py::ssize_t>(owned->size())}, {sizeof(int64_t)}, owned->data(),
                              free_when_done);
}

}  // namespace

PYBIND11_MODULE(_csrc, m) {
  m.doc() = "megatron_solo C++ helpers: tar indexing, packing, blending";
  m.def(
      "index_tar",
      [](const std::string& path) {
        std::vector<solo::TarMember> members;
        {
          py::gil_scoped_release release;
          members = solo::index_tar(path);
        }
        py::list out;
        for (const auto& mem : members)
          out.append(py::make_tuple(mem.name, mem.header_offset, mem.data_offset, mem.size));
        return out;
      },
      py::arg("path"),
      "List (name, header_offset, data_offset, size) of each regular file in a tar archive; "
      "raises ValueError naming the file when it is truncated or corrupt.");
  m.def(
      "pack_samples",
      [](I64Array lengths, int64_t seq_length, uint64_t seed, int64_t epoch, I64Array block_ptr,
         I64Array block_start, I64Array block_end, bool split, int64_t open_bins, bool shuffle) {
        const int64_t n = lengths.size();
        if (block_ptr.size() != n + 1) throw std::invalid_argument("block_ptr must have len(lengths)+1 entries");
        const int64_t nb = block_start.size();
        if (block_end.size() != nb) throw std::invalid_argument("block_start and block_end differ in length");
        const int64_t* bp = block_ptr.data();
        for (int64_t i = 0; i < n; ++i)
          if (bp[i] < 0 || bp[i] > bp[i + 1] || bp[i + 1] > nb) throw std::invalid_argument("bad block_ptr");
        solo::PackOutput out;
        {
          py::gil_scoped_release release;
          out = solo::pack_samples(lengths.data(), n, seq_length, seed, epoch, bp, block_start.data(),
                                   block_end.data(), split, open_bins, shuffle);
        }
        py::dict d;
        d["pack_ptr"] = to_numpy(std::move(out.pack_ptr));
        d["item_sample"] = to_numpy(std::move(out.item_sample));
        d["item_start"] = to_numpy(std::move(out.item_start));
        d["item_end"] = to_numpy(std::move(out.item_end));
        d["dropped"] = to_numpy(std::move(out.dropped));
        d["num_split"] = out.num_split;
        d["dropped_tokens"] = out.dropped_tokens;
        return d;
      },
      py::arg("lengths"), py::arg("seq_length"), py::arg("seed"), py::arg("epoch"), py::arg("block_ptr"),
      py::arg("block_start"), py::arg("block_end"), py::arg("split"), py::arg("open_bins"), py::arg("shuffle"),
      "Bounded best-fit packing of sample lengths into seq_length; returns CSR arrays and overflow counts.");
  m.def(
      "shuffled_order",
      [](int64_t n, uint64_t seed, int64_t epoch) {
        std::vector<int64_t> order;
        {
          py::gil_scoped_release release;
          order = solo::shuffled_order(n, seed, epoch);
        }
        return to_numpy(std::move(order));
      },
      py::arg("n"), py::arg("seed"), py::arg("epoch"), "The packer's splitmix64 Fisher-Yates permutation.");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::runtime_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}
