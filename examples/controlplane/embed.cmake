# embed.cmake — turn ui_page.html into a C array at build time (cmake -P).
#   cmake -DIN=ui_page.html -DOUT=ui_page_data.c -P embed.cmake
# The generated file lives in the build tree only.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR nbytes "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f])" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp"
  "/* Generated from ui_page.html by embed.cmake; do not edit. */\n"
  "#include <stddef.h>\n"
  "const char cp_ui_page[] = {\n${bytes}0x00};\n"
  "const size_t cp_ui_page_len = ${nbytes};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
