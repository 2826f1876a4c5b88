test_that("rnnClassify adds predictions, the embedding and the metrics; nothing else changes", {
    skip_without_tool()
    sce <- toy_sce()
    sce$cell_type[c(2, 9)] <- NA
    sce$batch <- c(NA, rep(1:3, length.out = ncol(sce) - 1))
    before <- sce
    model <- tempfile(fileext = ".h5")
    sce <- do.call(rnnClassify, c(list(sce, label = "cell_type", layout = "profile",
                                       chunk_size = 4, model_out = model), fast))
    expect_s4_class(sce, "SingleCellExperiment")
    expect_true(is.factor(sce$rnn_pred))
    expect_false(anyNA(sce$rnn_pred))
    expect_identical(levels(sce$rnn_pred), levels(before$cell_type))
    expect_true(all(c("rnn", "rnn_proba") %in% reducedDimNames(sce)))
    expect_identical(ncol(reducedDim(sce, "rnn_proba")), 3L)
    expect_true(is.numeric(metadata(sce)$rnn$metrics$rnn$accuracy))
    expect_identical(metadata(sce)$rnn$model_path, normalizePath(model))
    for (cn in colnames(colData(before))) expect_identical(sce[[cn]], before[[cn]])
    expect_identical(assays(sce), assays(before))

    # the model applied to another object
    other <- toy_sce(seed = 2)
    other <- do.call(rnnPredict, c(list(other, model = metadata(sce)$rnn$model_path),
                                   fast[c("device", "threads", "quiet")]))
    expect_true(is.factor(other$rnn_pred))
    expect_identical(metadata(other)$rnn$model_path, normalizePath(model))
    expect_identical(readRnnModel(model)$classes, c("alpha", "beta", "gamma"))
})

test_that("rnnForecast on a SummarizedExperiment time course adds the forecasts as an assay", {
    skip_without_tool()
    file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
    yeast <- readH5ad(file)
    se <- SummarizedExperiment(assays(yeast)["X"], colData = colData(yeast))
    se <- do.call(rnnForecast, c(list(se, series_key = "series", time_key = "time",
                                      series_subset = c("cdc15", "cdc28")), fast))
    expect_s4_class(se, "SummarizedExperiment")
    expect_false(is(se, "SingleCellExperiment"))
    expect_true("rnn_forecast" %in% assayNames(se))
    expect_identical(dim(assay(se, "rnn_forecast")), dim(se))
    expect_identical(dimnames(assay(se, "rnn_forecast")), dimnames(se))
    expect_true(is.list(metadata(se)$rnn$metrics))
    expect_true(file.exists(metadata(se)$rnn$model_path))
})

test_that("an error of the tool is an R error with its one-line message", {
    skip_without_tool()
    sce <- toy_sce(n_cells = 9, n_genes = 4)
    err <- expect_error(rnnClassify(sce, label = "no_such_column", layout = "profile"),
                        class = "anndataRnnError")
    expect_match(conditionMessage(err), "^anndata-rnn classify: obs has no column 'no_such_column'")
    expect_false(grepl("\n", conditionMessage(err)))
})

test_that("no executable: a clear error", {
    old <- options(anndataRnn.executable = "/nonexistent/anndata-rnn")
    on.exit(options(old))
    expect_false(rnnAvailable())
    expect_error(rnnClassify(toy_sce(9, 4), label = "cell_type"), "anndata-rnn")
})
