// Python bindings of the C++ data helpers (module megatron_solo._csrc).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "tar_index.h"

namespace py = pybind11;

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
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::runtime_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}
