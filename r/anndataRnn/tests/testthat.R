library(testthat)
library(anndataRnn)

test_check("anndataRnn")
