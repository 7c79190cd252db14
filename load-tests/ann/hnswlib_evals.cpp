// Distance evaluations per query of hnswlib, which its Python binding does not report.
//
// hnswlib 0.8.0's own headers (from its PyPI source archive), built with M and
// ef_construction as given; the space wraps hnswlib's inner-product or L2 kernel in a counter,
// so every distance the search computes is counted and nothing else of hnswlib changes.
// Reads raw little-endian f32 items and queries and u32 ground truth; prints one JSON line.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "hnswlib/hnswlib.h"

static thread_local long evals = 0;
static hnswlib::DISTFUNC<float> inner;

static float counted(const void *a, const void *b, const void *param) {
    ++evals;
    return inner(a, b, param);
}

class CountingSpace : public hnswlib::SpaceInterface<float> {
    hnswlib::SpaceInterface<float> *space_;

  public:
    explicit CountingSpace(hnswlib::SpaceInterface<float> *space) : space_(space) {
        inner = space->get_dist_func();
    }
    size_t get_data_size() override { return space_->get_data_size(); }
    hnswlib::DISTFUNC<float> get_dist_func() override { return counted; }
    void *get_dist_func_param() override { return space_->get_dist_func_param(); }
};

template <typename T> static std::vector<T> read_raw(const char *path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    std::vector<T> v(f.tellg() / sizeof(T));
    f.seekg(0);
    f.read(reinterpret_cast<char *>(v.data()), v.size() * sizeof(T));
    return v;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr,
                "usage: %s items.f32 queries.f32 truth.u32 dim k M ef_construction ip|l2 ef,ef,...\n",
                argv[0]);
        return 2;
    }
    auto items = read_raw<float>(argv[1]);
    auto queries = read_raw<float>(argv[2]);
    auto truth = read_raw<uint32_t>(argv[3]);
    size_t dim = atoi(argv[4]), k = atoi(argv[5]), m = atoi(argv[6]), efc = atoi(argv[7]);
    std::string metric = argv[8];
    size_t n = items.size() / dim, nq = queries.size() / dim;
    hnswlib::SpaceInterface<float> *base;
    if (metric == "l2")
        base = new hnswlib::L2Space(dim);
    else
        base = new hnswlib::InnerProductSpace(dim);
    CountingSpace space(base);
    hnswlib::HierarchicalNSW<float> index(&space, n, m, efc, 100);
    // hnswlib's Python binding builds the same way: the first point, then the rest in parallel.
    index.addPoint(items.data(), 0);
    size_t threads = std::max(1u, std::thread::hardware_concurrency());
    std::atomic<size_t> next{1};
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; t++)
        pool.emplace_back([&] {
            for (size_t i; (i = next++) < n;)
                index.addPoint(items.data() + i * dim, i);
        });
    for (auto &t : pool) t.join();

    printf("{\"engine\":\"hnswlib\",\"runs\":[");
    std::string efs = argv[9];
    size_t pos = 0;
    bool first = true;
    while (pos < efs.size()) {
        size_t comma = efs.find(',', pos);
        if (comma == std::string::npos) comma = efs.size();
        size_t ef = std::stoul(efs.substr(pos, comma - pos));
        pos = comma + 1;
        index.setEf(ef);
        evals = 0;
        size_t hits = 0;
        for (size_t q = 0; q < nq; q++) {
            auto found = index.searchKnn(queries.data() + q * dim, k);
            std::unordered_set<uint32_t> want(truth.begin() + q * k, truth.begin() + (q + 1) * k);
            while (!found.empty()) {
                hits += want.count(found.top().second);
                found.pop();
            }
        }
        printf("%s{\"ef\":%zu,\"recall\":%.4f,\"dist_evals\":%.1f}", first ? "" : ",", ef,
               double(hits) / double(nq * k), double(evals) / double(nq));
        first = false;
    }
    printf("]}\n");
    return 0;
}
