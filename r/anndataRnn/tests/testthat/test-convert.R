test_that("SingleCellExperiment -> .h5ad -> SingleCellExperiment keeps types and NA", {
    set.seed(3)
    counts <- Matrix::rsparsematrix(15, 8, density = 0.4)
    counts@x <- abs(counts@x)
    dimnames(counts) <- list(paste0("g", 1:15), paste0("c", 1:8))
    sce <- SingleCellExperiment(
        list(counts = counts, logcounts = as.matrix(log1p(counts))),
        colData = DataFrame(
            type = factor(c("a", "b", NA, "a", "b", "a", "b", "b"), levels = c("b", "a")),
            n = c(1L, NA, 3:8), flag = c(TRUE, FALSE, NA, TRUE, TRUE, FALSE, TRUE, FALSE),
            ok = rep(c(TRUE, FALSE), 4), s = c(letters[1:7], NA), d = c(0.5, NA, 1:6),
            stage = factor(rep(c("lo", "hi"), 4), levels = c("lo", "hi"), ordered = TRUE)),
        rowData = DataFrame(symbol = paste0("S", 1:15), chr = c(1:14, NA)),
        reducedDims = list(PCA = matrix(rnorm(16), 8)))
    file <- tempfile(fileext = ".h5ad")
    writeH5ad(sce, file)
    back <- readH5ad(file)

    expect_s4_class(back, "SingleCellExperiment")
    expect_identical(dimnames(back), dimnames(sce))
    expect_s4_class(assay(back, "X"), "dgCMatrix")
    expect_equal(assay(back, "X"), counts)
    expect_equal(assay(back, "logcounts"), assay(sce, "logcounts"))
    for (cn in colnames(colData(sce))) expect_identical(back[[cn]], sce[[cn]], info = cn)
    expect_identical(rowData(back)$symbol, rowData(sce)$symbol)
    expect_identical(rowData(back)$chr, rowData(sce)$chr)
    expect_equal(unname(reducedDim(back, "PCA")), unname(reducedDim(sce, "PCA")))

    # the encodings on disk are anndata's
    ls <- rhdf5::h5ls(file, recursive = TRUE)
    enc <- function(p) rhdf5::h5readAttributes(file, p)[["encoding-type"]]
    expect_identical(enc("/X"), "csr_matrix")
    expect_identical(enc("/obs/type"), "categorical")
    expect_identical(enc("/obs/n"), "nullable-integer")
    expect_identical(enc("/obs/flag"), "nullable-boolean")
    expect_identical(enc("/obs/s"), "nullable-string-array")
    expect_identical(enc("/obs/ok"), "array")
    expect_identical(enc("/var/chr"), "nullable-integer")
    issues <- h5adEncodingIssues(file)
    expect_true("/obs/n" %in% issues$path)
})

test_that("assay, layers and reducedDims choose what is written", {
    sce <- toy_sce(n_cells = 9, n_genes = 4)
    assay(sce, "dense") <- as.matrix(assay(sce, "counts")) * 2
    file <- tempfile(fileext = ".h5ad")
    writeH5ad(sce, file, assay = "dense", layers = FALSE, reducedDims = FALSE)
    back <- readH5ad(file)
    expect_identical(assayNames(back), "X")
    expect_true(is.matrix(assay(back, "X")))
    expect_equal(assay(back, "X"), assay(sce, "dense"))
    expect_error(writeH5ad(sce, file, assay = "nope"), "no assay 'nope'")
    expect_error(writeH5ad(matrix(1), file), "SummarizedExperiment")
})

test_that("an object without colData columns or names is written", {
    se <- SummarizedExperiment(list(m = matrix(as.double(1:6), 2)))
    file <- tempfile(fileext = ".h5ad")
    writeH5ad(se, file)
    back <- readH5ad(file)
    expect_identical(colnames(back), paste0("cell", 1:3))
    expect_identical(rownames(back), paste0("gene", 1:2))
    expect_equal(unname(assay(back, "X")), matrix(as.double(1:6), 2))
})

test_that("the bundled yeast time course reads", {
    file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
    yeast <- readH5ad(file)
    expect_identical(dim(yeast), c(400L, 77L))
    expect_true(is.logical(rowData(yeast)$cell_cycle_800))
    expect_true(is.factor(yeast$series))
    expect_true("cdc15" %in% levels(yeast$series))
})

test_that("options become command line arguments; NULL is not passed", {
    args <- anndataRnn:::.cli_args("classify", list(
        label = "cell_type", hidden = c(16, 8), epochs = 3, lr = 5e-4, bidirectional = TRUE,
        class_weights = FALSE, linear_path = FALSE, series_subset = c("a", "b"), seed = NULL))
    # in the command's option order
    expect_identical(args, c("--label", "cell_type", "--series-subset", "a,b", "--hidden", "16,8",
                             "--bidirectional", "--no-linear-path", "--epochs", "3", "--lr",
                             "5e-04"))
    expect_identical(anndataRnn:::.cli_args("classify", list()), character(0))
    expect_error(anndataRnn:::.cli_args("classify", list(quiet = "yes")), "TRUE or FALSE")
    expect_error(anndataRnn:::.cli_args("classify", list(epochs = NA)), "without NA")
})

test_that("R's library directories are kept from the tool's LD_LIBRARY_PATH", {
    kept <- anndataRnn:::.tool_ld_library_path(paste(
        R.home("lib"), "/usr/lib/x86_64-linux-gnu", "/usr/lib/jvm/default-java/lib/server",
        "/opt/cuda/lib64", sep = ":"))
    expect_identical(kept, "/opt/cuda/lib64")
})
