test_that("readRnnModel reads the layout from config$layout; an older file's copies must agree", {
    skip_without_tool()
    model <- tempfile(fileext = ".h5")
    do.call(rnnClassify, c(list(toy_sce(), label = "cell_type", layout = "profile",
                                chunk_size = 4, model_out = model), fast))
    m <- readRnnModel(model)
    expect_identical(m$layout, "profile")
    expect_null(m$config$keys$layout)  # stored once
    expect_null(m$config$preprocessing$layout)

    # files written before the layout was stored once repeat it in keys and preprocessing
    with_copies <- function(layout) {
        text <- rhdf5::h5readAttributes(model, "/")$config
        for (part in c("keys", "preprocessing")) {
            opening <- sprintf('"%s": {', part)
            expect_true(grepl(opening, text, fixed = TRUE))
            text <- sub(opening, sprintf('%s"layout": "%s", ', opening, layout), text,
                        fixed = TRUE)
        }
        old <- tempfile(fileext = ".h5")
        file.copy(model, old)
        fid <- rhdf5::H5Fopen(old)
        rhdf5::h5writeAttribute(text, fid, "config")
        rhdf5::H5Fclose(fid)
        old
    }
    old <- readRnnModel(with_copies("profile"))
    expect_identical(old$config$keys$layout, "profile")
    expect_identical(old$layout, "profile")
    expect_identical(old$features, m$features)
    expect_error(readRnnModel(with_copies("obs-series")),
                 "config\\$keys\\$layout .*obs-series.*, not the model's layout .*profile")
})
